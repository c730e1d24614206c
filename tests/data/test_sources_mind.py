"""MIND converter: one row per shown candidate, history as a user attribute."""

from datetime import UTC, datetime

from recsys.data import load_dataset, prepare


def ts(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_mind(raw_copy, tmp_path, gzip_in_place):
    raw = raw_copy("mind")
    gzip_in_place(raw / "behaviors.tsv")  # .tsv and .tsv.gz are both read
    prepare("mind", raw, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    first, second, third = ts(2019, 11, 11, 9, 5, 27), ts(2019, 11, 12, 14, 14, 46), ts(
        2019, 11, 13, 0, 0, 1)  # "12:00:01 AM" is just after midnight
    assert ds.interactions.to_dict("records") == [
        {"user_id": "U1", "item_id": "N3", "timestamp": first, "label": 1, "impression_id": "1"},
        {"user_id": "U1", "item_id": "N4", "timestamp": first, "label": 0, "impression_id": "1"},
        {"user_id": "U2", "item_id": "N4", "timestamp": second, "label": 0, "impression_id": "2"},
        {"user_id": "U2", "item_id": "N5", "timestamp": second, "label": 1, "impression_id": "2"},
        {"user_id": "U2", "item_id": "N3", "timestamp": second, "label": 0, "impression_id": "2"},
        {"user_id": "U1", "item_id": "N5", "timestamp": third, "label": 0, "impression_id": "3"},
    ]
    none = {"category": None, "subcategory": None, "title": None, "abstract": None}
    assert ds.items.to_dict("records") == [
        {"item_id": "N3", "category": "sports", "subcategory": "football", "title": "Big Game",
         "abstract": "A game was played."},
        {"item_id": "N5", "category": "news", "subcategory": "newspolitics",
         "title": 'The "Vote"', "abstract": None},
        {"item_id": "N9", "category": "lifestyle", "subcategory": "food",
         "title": "Unreferenced", "abstract": "Abstract."},
        {"item_id": "N4", **none},  # shown but not in news.tsv
        {"item_id": "N1", **none},  # only in a history
        {"item_id": "N2", **none},
    ]
    assert ds.users.to_dict("records") == [{"user_id": "U1", "history": ["N1", "N2"]},
                                           {"user_id": "U2", "history": None}]
    assert ds.info["items_without_text"] == 3


def test_bad_time_and_candidate(raw_copy, assert_fails_cleanly):
    raw = raw_copy("mind")
    lines = (raw / "behaviors.tsv").read_text().splitlines(keepends=True)
    (raw / "behaviors.tsv").write_text(lines[0] + lines[1].replace("2:14:46 PM", "14:14:46"))
    assert_fails_cleanly("mind", raw, "behaviors.tsv", "'time'", "'11/12/2019 14:14:46'",
                  "line 2: '2\\tU2\\t11/12/2019 14:14:46\\t\\tN4-0 N5-1 N3-0'")
    (raw / "behaviors.tsv").write_text(lines[0] + lines[1].replace("N5-1", "N5"))
    assert_fails_cleanly("mind", raw, "behaviors.tsv", "'impressions'", "'N5'", "line 2: '2\\tU2")
