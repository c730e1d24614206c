"""Models: nn.Modules holding parameters only, each built from its own config section and the
table sizes of its catalogue; what a batch reads arrives with the batch (the table
`recsys.recipes.RECIPES` says which model a config names and how its inputs are made)."""

from recsys.models.popularity import Popularity
from recsys.models.recformer import Recformer
from recsys.models.reranker import Reranker
from recsys.models.sasrec import SASRec
from recsys.models.two_tower import TwoTower

__all__ = ["Popularity", "Recformer", "Reranker", "SASRec", "TwoTower"]
