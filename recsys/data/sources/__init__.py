"""One converter module per raw-data family; `recsys.data.prepare.SOURCES` names them."""
