"""Amazon converters (LC-Rec json, S3-Rec text, raw 2018 json lines) on tiny fixtures."""

import json

import pytest

from recsys.data import load_dataset, prepare


def test_amazon_lcrec_position_is_time(raw_copy, tmp_path):
    prepare("amazon-lcrec", raw_copy("amazon-lcrec"), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "0", "item_id": "0", "timestamp": 0},
        {"user_id": "0", "item_id": "1", "timestamp": 1},
        {"user_id": "0", "item_id": "2", "timestamp": 2},
        {"user_id": "1", "item_id": "2", "timestamp": 0},
        {"user_id": "1", "item_id": "0", "timestamp": 1},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "0", "title": "SUPCO Hard Start Kit.",
         "description": "Relay & capacitor, 500% torque. Made in china.",  # HTML cleaned
         "brand": "Supco",
         "category": ["Industrial & Scientific", "Tapes, Adhesives & Sealants", "Adhesive Tapes"]},
        {"item_id": "1", "title": "Stanley Staples", "description": None, "brand": "Stanley",
         "category": None},
        {"item_id": "2", "title": "Crystal 50 PCS(± 2%)", "description": None, "brand": None,
         "category": ["Industrial & Scientific"]},
    ]
    assert ds.info["name"] == "Amazon Tiny (LC-Rec)"


def test_amazon_s3rec_with_datamaps(raw_copy, tmp_path, gzip_in_place):
    raw = raw_copy("amazon-s3rec")
    gzip_in_place(raw / "datamaps.json")  # shipped gzipped in the shared copy
    prepare("amazon-s3rec", raw, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "1", "item_id": "1", "timestamp": 0},
        {"user_id": "1", "item_id": "2", "timestamp": 1},
        {"user_id": "1", "item_id": "3", "timestamp": 2},
        {"user_id": "2", "item_id": "4", "timestamp": 0},
        {"user_id": "2", "item_id": "2", "timestamp": 1},
    ]
    assert ds.items.to_dict("records") == [  # order of first appearance, then attribute-only
        {"item_id": "1", "asin": "B001", "attribute_ids": ["1", "2"]},
        {"item_id": "2", "asin": "B002", "attribute_ids": ["3"]},
        {"item_id": "3", "asin": "B003", "attribute_ids": ["1"]},
        {"item_id": "4", "asin": "B004", "attribute_ids": ["2", "3"]},
        {"item_id": "5", "asin": "B005", "attribute_ids": ["1"]},
    ]
    assert ds.users.to_dict("records") == [{"user_id": "1", "reviewer_id": "A1YJ"},
                                           {"user_id": "2", "reviewer_id": "A60X"}]


def test_amazon_s3rec_without_datamaps(raw_copy, tmp_path):
    raw = raw_copy("amazon-s3rec")
    (raw / "datamaps.json").unlink()
    prepare("amazon-s3rec", raw, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.users is None and list(ds.items.columns) == ["item_id", "attribute_ids"]


def test_amazon_2018(raw_copy, tmp_path, gzip_in_place):
    raw = raw_copy("amazon-2018")
    gzip_in_place(raw / "Tiny_5.json")
    gzip_in_place(raw / "meta_Tiny.json")
    prepare("amazon-2018", raw, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "U1", "item_id": "0345816021", "timestamp": 1393372800, "rating": 4.0},
        {"user_id": "U2", "item_id": "B002", "timestamp": 1078531200, "rating": 5.0},
        {"user_id": "U1", "item_id": "B003", "timestamp": 1393372800, "rating": 2.0},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "0345816021", "title": None,  # the title was an HTML fragment
         "brand": "String Letter",
         "category": ["Magazine Subscriptions", "Arts, Music & Photography"],
         "description": "Written by musicians for musicians."},
        {"item_id": "B002", "title": "PC World", "brand": None, "category": None,
         "description": None},  # the first of two meta rows wins
        {"item_id": "B003", "title": None, "brand": None, "category": None,
         "description": None},  # reviewed but not in meta
    ]
    assert ds.info["items_without_text"] == 1


def test_amazon_2018_all_meta_items(raw_copy, tmp_path):
    prepare("amazon-2018", raw_copy("amazon-2018"), tmp_path / "ds", {"items": "all"})
    items = load_dataset(tmp_path / "ds").items
    assert items["item_id"].tolist() == ["0345816021", "B002", "B999", "B003"]
    assert items.iloc[2].to_dict() == {"item_id": "B999", "title": None, "brand": "Unreviewed",
                                       "category": None, "description": None}


# --- bad input --------------------------------------------------------------------------------


def test_lcrec_unknown_item(raw_copy, assert_fails_cleanly):
    raw = raw_copy("amazon-lcrec")
    (raw / "Tiny.inter.json").write_text(json.dumps({"0": [0, 7]}))
    assert_fails_cleanly("amazon-lcrec", raw, "Tiny.inter.json", "'item_id'", "'7' is not in "
                  "Tiny.item.json", "row 1: user_id='0', item_id='7'")


def test_lcrec_bad_json_and_encoding(raw_copy, assert_fails_cleanly):
    raw = raw_copy("amazon-lcrec")
    (raw / "Tiny.inter.json").write_text('{"0": [0, 1,\n "1": [2]}')
    assert_fails_cleanly("amazon-lcrec", raw, "Tiny.inter.json", "invalid JSON", "line 2")
    raw = raw_copy("amazon-s3rec")
    text = (raw / "Tiny_item2attributes.json").read_text()
    (raw / "Tiny_item2attributes.json").write_bytes(text.replace('"4"', '"\xff"').encode("latin-1"))
    assert_fails_cleanly("amazon-s3rec", raw, "Tiny_item2attributes.json", "not valid utf-8",
                  "line 1: b'{\"\\xff\": [2, 3]")


def test_2018_missing_column_and_bad_timestamp(raw_copy, assert_fails_cleanly):
    raw = raw_copy("amazon-2018")
    lines = (raw / "Tiny_5.json").read_text().splitlines()
    review = json.loads(lines[1])
    del review["unixReviewTime"]
    (raw / "Tiny_5.json").write_text("\n".join([lines[0], json.dumps(review), lines[2]]))
    assert_fails_cleanly("amazon-2018", raw, "Tiny_5.json", "'unixReviewTime'", "cannot parse",
                  'line 2: \'{"overall": 5.0, "vote": "3", "reviewerID": "U2"')
    (raw / "Tiny_5.json").write_text('{"reviewerID": "U1", "asin": "B002"}\n')
    assert_fails_cleanly("amazon-2018", raw, "Tiny_5.json", "'unixReviewTime'", "missing",
                  'line 1: \'{"reviewerID": "U1", "asin": "B002"}\'')


def test_s3rec_empty_file(raw_copy, assert_fails_cleanly):
    raw = raw_copy("amazon-s3rec")
    (raw / "Tiny.txt").write_text("\n")
    assert_fails_cleanly("amazon-s3rec", raw, "Tiny.txt", "'user_id'", "no rows")


@pytest.mark.parametrize("value", ["99999999999999999999", "1e30", "-1e30"])
def test_2018_timestamp_outside_int64(raw_copy, assert_fails_cleanly, value):
    raw = raw_copy("amazon-2018")  # pandas refused the first (a ValueError traceback); the
    reviews = raw / "Tiny_5.json"  # others became -2**63
    reviews.write_text(reviews.read_text().replace("1078531200", value))
    assert_fails_cleanly("amazon-2018", raw, "Tiny_5.json: column 'unixReviewTime'",
                         "as a whole number within int64", "line 2: ",
                         f'"unixReviewTime": {value}}}\'')


@pytest.mark.parametrize(("column", "old", "value", "problem"), [
    ("unixReviewTime", "1078531200", "1" + "0" * 400, "as a whole number within int64"),
    ("unixReviewTime", "1078531200", "true", "cannot parse True as a whole number"),
    ("overall", "5.0", "1" + "0" * 400, "as a finite float32 number"),
    ("overall", "5.0", "true", "cannot parse True as a finite float32"),
], ids=["time-10**400", "time-true", "rating-10**400", "rating-true"])
def test_2018_json_value_that_is_not_a_number(raw_copy, assert_fails_cleanly, column, old, value,
                                              problem):
    raw = raw_copy("amazon-2018")  # 10**400 was an OverflowError traceback, true read as 1
    reviews = raw / "Tiny_5.json"
    reviews.write_text(reviews.read_text().replace(f'"{column}": {old}', f'"{column}": {value}'))
    assert_fails_cleanly("amazon-2018", raw, f"Tiny_5.json: column '{column}'", problem,
                         'line 2: \'{"overall": ')


@pytest.mark.parametrize(("source", "mapping"), [
    ("amazon-lcrec", {"name": "../amazon-lcrec/Tiny"}),
    ("amazon-s3rec", {"name": "/tmp/Tiny"}),
    ("amazon-2018", {"reviews": "../amazon-2018/Tiny_5.json"}),
    ("amazon-2018", {"meta": "../amazon-2018/meta_Tiny.json"}),
])
def test_mapping_names_a_file_outside_the_raw_dir(raw_copy, assert_fails_cleanly, source,
                                                  mapping):
    raw = raw_copy(source) / "sub"  # the dataset's own files sit one level up
    raw.mkdir()
    key = next(iter(mapping))
    assert_fails_cleanly(source, raw, f"mapping for {source}: '{key}' must name a file inside "
                         "the raw dir", mapping=mapping)
