"""Every converter on the real shared datasets: the counts of each SOURCE.md / data README.

Skipped when <repo>/../shared/data is absent. Each test prepares into tmp_path and loads the
result back (which re-validates and checks the content hash).
"""

import pandas as pd
import pytest

from recsys.data import DataError, load_dataset, prepare


def prepared(source, raw, tmp_path, mapping=None):
    prepare(source, raw, tmp_path / "ds", mapping)
    return load_dataset(tmp_path / "ds")


def counts(ds):
    return ds.info["counts"]


def test_real_movielens_100k(real_data, tmp_path):
    ds = prepared("movielens-100k", real_data("ml-100k"), tmp_path)
    assert counts(ds) == {"interactions": 100_000, "users": 943, "items": 1682}
    assert ds.interactions["rating"].value_counts().sort_index().tolist() == [
        6110, 11370, 27145, 34174, 21201]
    assert ds.interactions.iloc[0].tolist() == ["196", "242", 881250949, 3.0]  # first line
    assert ds.interactions.iloc[-1].tolist() == ["12", "203", 879959583, 3.0]  # last line
    assert ds.items["release_date"].notna().sum() == 1681  # 99.94 %
    assert ds.items["genres"].isna().sum() == 2  # flagged only 'unknown'
    assert len(ds.users) == 943 and ds.info["items_without_text"] == 0


def test_real_movielens_1m_complete_timestamp_subset(real_data, tmp_path):
    ds = prepared("movielens-1m", real_data("ml-1m"), tmp_path)
    assert counts(ds) == {"interactions": 487_650, "users": 2999, "items": 3883}
    assert ds.info["items_interacted"] == 3615 and len(ds.users) == 6040
    assert ds.interactions.iloc[0].tolist() == ["1", "1193", 978300760, 5.0]
    assert ds.items["genres"].notna().all() and ds.items["year"].notna().all()


@pytest.mark.slow
def test_real_movielens_1m_partial_timestamps(real_data, tmp_path):
    raw = real_data("ml-1m")
    mapping = {"ratings_file": "ratings_all_partial_ts.csv.gz"}
    with pytest.raises(DataError, match="no timestamp on 199435 rows"):
        prepare("movielens-1m", raw, tmp_path / "ds", mapping)
    ds = prepared("movielens-1m", raw, tmp_path, {**mapping, "missing_timestamp": "drop"})
    assert counts(ds)["interactions"] == 800_774
    assert ds.info["notes"]["dropped_rows_without_timestamp"] == 199_435  # 1,000,209 in all
    assert pd.to_datetime(ds.interactions["timestamp"].agg(["min", "max"]), unit="s").tolist() == [
        pd.Timestamp("2000-04-25 23:05:32"), pd.Timestamp("2003-02-28 17:49:50")]


def test_real_movielens_latest(real_data, tmp_path):
    ds = prepared("movielens-latest", real_data("ml-latest-small"), tmp_path)
    assert counts(ds) == {"interactions": 100_836, "users": 610, "items": 9742}
    assert ds.info["items_interacted"] == 9724
    assert ds.items["genres"].isna().sum() == 34  # "(no genres listed)": 99.65 % have genres
    assert ds.items["tags"].notna().sum() == 1572  # 16.1 % of the movies have tags


def test_real_amazon_lcrec(real_data, tmp_path):
    ds = prepared("amazon-lcrec", real_data("amazon-industrial-scientific"), tmp_path)
    assert counts(ds) == {"interactions": 58_492, "users": 8317, "items": 4344}
    present = ds.items.notna().sum()
    assert (present["title"], present["description"], present["brand"], present["category"]) \
        == (4344, 4221, 4332, 4213)  # 100 %, 97.17 %, 99.72 %, 96.98 %
    assert not ds.interactions.duplicated(["user_id", "item_id"]).any()


def test_real_amazon_s3rec_and_tabular_agree(real_data, tmp_path):
    raw = real_data("amazon-beauty")
    ds = prepared("amazon-s3rec", raw, tmp_path / "s3rec")
    assert counts(ds) == {"interactions": 198_502, "users": 22_363, "items": 12_101}
    assert ds.items["asin"].notna().all() and ds.users["reviewer_id"].notna().all()
    assert ds.items["attribute_ids"].explode().nunique() == 637
    # the derived CSVs in the same folder, through the generic converter, give the same data
    mapping = {"interactions": "interactions.csv.gz", "items": "items.csv",
               "columns": {"user_id": "user_id", "item_id": "item_id", "timestamp": "position"},
               "list_separator": " ", "list_columns": ["attribute_ids"]}
    tab = prepared("tabular", raw, tmp_path / "tabular", mapping)
    pd.testing.assert_frame_equal(tab.interactions, ds.interactions)
    joined = ds.items.merge(tab.items, on="item_id", suffixes=("", "_csv"))
    assert len(joined) == 12_101 and (joined["asin"] == joined["asin_csv"]).all()
    assert (joined["attribute_ids"] == joined["attribute_ids_csv"]).all()


def test_real_amazon_2018(real_data, tmp_path):
    ds = prepared("amazon-2018", real_data("amazon2018-magazine-subscriptions"), tmp_path)
    assert counts(ds) == {"interactions": 2375, "users": 348, "items": 157}
    assert ds.info["items_without_text"] == 6  # reviewed, not in meta (96.2 % have meta)
    assert ds.info["tied_timestamps"] == 1174  # day granularity
    present = ds.items.notna().sum()
    assert (present["brand"], present["category"], present["description"]) == (148, 145, 145)
    assert present["title"] == 3  # the other titles are HTML junk
    assert not ds.items["title"].dropna().str.contains("<|>|class=").any()


def test_real_mind_fragment(real_data, tmp_path):
    ds = prepared("mind", real_data("mind-small-fragment"), tmp_path)
    inter = ds.interactions
    assert counts(ds) == {"interactions": 189_359, "users": 4637, "items": 23_754}
    assert int(inter["label"].sum()) == 7542 and inter["impression_id"].nunique() == 5000
    assert ds.items["title"].notna().sum() == 2000  # only the news.tsv rows have text
    with_text = inter["item_id"].isin(ds.items.loc[ds.items["title"].notna(), "item_id"])
    assert round(with_text.mean(), 3) == 0.028  # "only 2.8 % of the candidate news ids"
    clicked = with_text & (inter["label"] == 1)
    assert round(with_text[inter["label"] == 1].mean(), 3) == 0.023  # and 2.3 % of clicked
    assert clicked.groupby(inter["impression_id"]).any().sum() == 166
    assert not with_text.groupby(inter["impression_id"]).all().any()
    assert ds.users["history"].isna().sum() == 101  # 2.1 % of impressions: empty history
