"""Data layer: raw files -> canonical dataset directory (parquet + dataset.json) -> DataFrames.

    from recsys.data import prepare, ensure_dataset, load_dataset
    ensure_dataset("movielens-100k", "../shared/data/ml-100k", "data/prepared/ml-100k")
    ds = load_dataset("data/prepared/ml-100k")   # ds.interactions, ds.items, ds.users, ds.info
    dataset_sha256("data/prepared/ml-100k")       # its content hash, from dataset.json only
"""

from recsys.data.prepare import SOURCES, ensure_dataset, prepare
from recsys.data.schema import DataError, Dataset, dataset_sha256, load_dataset, write_dataset

__all__ = [
    "SOURCES", "DataError", "Dataset", "dataset_sha256", "ensure_dataset", "load_dataset",
    "prepare", "write_dataset",
]
