"""Models: nn.Modules only, each built from its own config section (the table
`recsys.recipes.RECIPES` says which model a config names and how its inputs are made)."""

from recsys.models.popularity import Popularity
from recsys.models.reranker import Reranker, RerankerInputs
from recsys.models.sasrec import SASRec
from recsys.models.two_tower import TowerInputs, TwoTower

__all__ = ["Popularity", "Reranker", "RerankerInputs", "SASRec", "TowerInputs", "TwoTower"]
