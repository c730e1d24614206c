"""Catalogue tables shared by the models that read item / user attributes as torchrec bags.

`categorical_codes` turns an attribute column into padded integer codes (-1 = none), and
`bag_features` turns the codes of a batch's rows into the `KeyedJaggedTensor` a `Bags` module
(recsys.models.bags) pools: the codes stay here, in the inputs layer, and only the rows a batch
reads reach the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torchrec import KeyedJaggedTensor

from features.text import clean_text


def bag_features(codes: dict[str, torch.Tensor]) -> KeyedJaggedTensor:
    """{name: codes (n, k) with -1 = none} -> a KeyedJaggedTensor of the non-negative codes,
    one bag per row and name, keys in `codes` order."""
    lengths = [(c >= 0).sum(1) for c in codes.values()]
    values = [c[c >= 0] for c in codes.values()]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(codes), values=torch.cat(values), lengths=torch.cat(lengths).int())


def row_bags(rows: torch.Tensor, id_name: str | None, attributes: dict[str, torch.Tensor],
             known: torch.Tensor | None = None, id_dropout: float = 0.0
             ) -> KeyedJaggedTensor | None:
    """The bags of catalogue rows (n,): their ID under `id_name` (None: no ID bag), then each
    attribute's codes (table rows (N, k), -1 = none); None when there are no bags.

    A row whose `known` (N,) is False has no trained ID row and reads an empty ID bag; so does
    an `id_dropout` share of the others (in training: the model learns to do without the ID).
    """
    if id_name is None and not attributes:
        return None
    keep = torch.ones(rows.shape, dtype=torch.bool) if known is None else known[rows]
    if id_dropout > 0:
        keep = keep & (torch.rand(rows.shape) >= id_dropout)
    codes = {id_name: torch.where(keep, rows, -1)[:, None]} if id_name is not None else {}
    return bag_features(codes | {name: table[rows] for name, table in attributes.items()})


def categorical_codes(values: pd.Series, max_values: int) -> tuple[np.ndarray, int]:
    """Attribute values (str | list[str] | missing) -> codes (n + 1, width) with -1 = none.

    Codes count distinct values in order of first appearance; an item keeps its first
    `max_values` values. Returns the codes and the number of distinct values.
    """
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(v, len(vocab)) for v in _values(x)[:max_values]] for x in values]
    width = max(1, max((len(r) for r in rows), default=0))
    codes = np.full((len(rows) + 1, width), -1, np.int64)
    for i, row in enumerate(rows, start=1):
        codes[i, : len(row)] = row
    return codes, len(vocab)


def _values(value) -> list[str]:
    """The distinct non-empty cleaned strings of one attribute value, in order."""
    if isinstance(value, list | tuple | np.ndarray):
        cleaned = (clean_text(v) for v in value)
    else:
        cleaned = (clean_text(value),)
    return list(dict.fromkeys(v for v in cleaned if v))


Tables = tuple[dict[str, torch.Tensor], dict[str, int]]  # attribute -> codes, -> value count


def attribute_tables(table: pd.DataFrame, columns: Sequence[str], max_values: int) -> Tables:
    """Per attribute column of `table`: codes (len(table) + 1, width) with row 0 the padding
    row (-1 = none), and its number of distinct values."""
    coded = {c: categorical_codes(table[c], max_values) for c in columns}
    return ({c: torch.as_tensor(codes) for c, (codes, _) in coded.items()},
            {c: size for c, (_, size) in coded.items()})


def user_attribute_tables(users: pd.DataFrame | None, user_ids: Sequence[str],
                          columns: Sequence[str], max_values: int, section: str) -> Tables:
    """Per user attribute: codes (len(user_ids), width) aligned to `user_ids` (-1 = none) and
    the number of distinct values; `section` names the config that asked for them."""
    if not columns:
        return {}, {}
    if users is None:
        raise ValueError(f"{section}.user_categorical is set but the dataset has no "
                         "users.parquet")
    require_columns(users, columns, "users.parquet", section)
    aligned = users.drop_duplicates("user_id").set_index("user_id").reindex(list(user_ids))
    codes, sizes = attribute_tables(aligned, columns, max_values)
    return {c: table[1:] for c, table in codes.items()}, sizes  # no padding row for users


def require_columns(table: pd.DataFrame, columns: Sequence[str], name: str,
                    section: str) -> None:
    """A clear error naming the first of `columns` (asked for by config `section`) missing
    from `table` (the file `name`)."""
    missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
    if missing:
        known = ", ".join(c for c in table.columns if not c.endswith("_id"))
        raise ValueError(f"{name} has no attribute {missing[0]!r} named in {section} "
                         f"(attributes: {known})")
