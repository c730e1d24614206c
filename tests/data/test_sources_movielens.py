"""MovieLens converters on tiny fixtures in the real formats, and their bad-input errors."""

import pytest

from recsys.data import DataError, load_dataset, prepare


def test_movielens_100k(raw_copy, tmp_path):
    info = prepare("movielens-100k", raw_copy("ml-100k"), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [  # file order, not time order
        {"user_id": "2", "item_id": "1", "timestamp": 881250949, "rating": 4.0},
        {"user_id": "1", "item_id": "2", "timestamp": 881250950, "rating": 3.0},
        {"user_id": "1", "item_id": "1", "timestamp": 881250949, "rating": 5.0},
        {"user_id": "2", "item_id": "3", "timestamp": 875000000, "rating": 1.0},
        {"user_id": "1", "item_id": "4", "timestamp": 881250949, "rating": 2.0},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "1", "title": "Toy Story (1995)", "year": "1995",
         "genres": ["Animation", "Children's", "Comedy"], "release_date": "01-Jan-1995"},
        {"item_id": "2", "title": "Misérables, Les (1995)", "year": "1995",  # latin-1
         "genres": ["Drama", "War"], "release_date": "01-Jan-1995"},
        {"item_id": "3", "title": "unknown", "year": None, "genres": None, "release_date": None},
        {"item_id": "4", "title": "Shanghai Triad (Yao a yao yao dao waipo qiao)",
         "year": "1995", "genres": ["Drama"], "release_date": "01-Jan-1995"},  # year from date
    ]
    assert ds.users.to_dict("records") == [
        {"user_id": "1", "age": "24", "gender": "M", "occupation": "technician", "zip": "85711"},
        {"user_id": "2", "age": "53", "gender": "F", "occupation": "other", "zip": "94043"},
    ]
    assert info["source"] == "movielens-100k" and "research use only" in info["license"]


def test_movielens_1m_defaults_and_options(raw_copy, tmp_path, gzip_in_place):
    raw = raw_copy("ml-1m")
    prepare("movielens-1m", raw, tmp_path / "a")
    ds = load_dataset(tmp_path / "a")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "1", "item_id": "3", "timestamp": 978300760, "rating": 5.0},
        {"user_id": "1", "item_id": "1", "timestamp": 978302109, "rating": 3.0},
        {"user_id": "2", "item_id": "2", "timestamp": 978301968, "rating": 4.0},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "1", "title": "Toy Story (1995)", "year": "1995",
         "genres": ["Animation", "Children's", "Comedy"]},
        {"item_id": "2", "title": "Misérables, Les (1935)", "year": "1935", "genres": ["Drama"]},
        {"item_id": "3", "title": "Sabrina (1995)", "year": "1995",
         "genres": ["Comedy", "Romance"]},
    ]
    assert ds.users.to_dict("records") == [  # README codes decoded
        {"user_id": "1", "gender": "F", "age": "Under 18", "occupation": "K-12 student",
         "zip": "48067"},
        {"user_id": "2", "gender": "M", "age": "56+", "occupation": "self-employed",
         "zip": "70072"},
    ]
    # without ratings.dat, the complete-timestamp subset of the shared copy is the default
    (raw / "ratings.dat").rename(raw / "ratings_users0001-2999.dat")
    gzip_in_place(raw / "ratings_users0001-2999.dat")
    info = prepare("movielens-1m", raw, tmp_path / "b")
    assert info["notes"]["ratings_file"] == "ratings_users0001-2999.dat.gz"
    assert info["counts"]["interactions"] == 3


def test_movielens_1m_partial_timestamps_are_never_zero(raw_copy, tmp_path, assert_fails_cleanly):
    raw = raw_copy("ml-1m")
    with (raw / "users.dat").open("a") as f:
        f.write("3000::M::25::0::10001\n")
    (raw / "partial.csv").write_text("user_id,movie_id,rating,timestamp\n"
                                     "1,1,4,978300760\n3000,2,1,\n3000,3,5,975000000\n")
    assert_fails_cleanly("movielens-1m", raw, "partial.csv", "'timestamp'", "line 3: '3000,2,1,'",
                  "missing_timestamp='drop'", mapping={"ratings_file": "partial.csv"})
    info = prepare("movielens-1m", raw, tmp_path / "ds",
                   {"ratings_file": "partial.csv", "missing_timestamp": "drop"})
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions[["user_id", "item_id", "timestamp"]].to_dict("records") == [
        {"user_id": "1", "item_id": "1", "timestamp": 978300760},
        {"user_id": "3000", "item_id": "3", "timestamp": 975000000},
    ]
    assert info["notes"]["dropped_rows_without_timestamp"] == 1
    assert info["mapping"] == {"missing_timestamp": "drop", "ratings_file": "partial.csv"}


def test_movielens_latest(raw_copy, tmp_path):
    prepare("movielens-latest", raw_copy("ml-latest"), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.to_dict("records") == [
        {"user_id": "1", "item_id": "1", "timestamp": 964982703, "rating": 4.0},
        {"user_id": "1", "item_id": "3", "timestamp": 964981247, "rating": 4.5},
        {"user_id": "2", "item_id": "2", "timestamp": 1445714994, "rating": 0.5},
    ]
    assert ds.items.to_dict("records") == [
        {"item_id": "1", "title": "Toy Story (1995)", "year": "1995",
         "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
         "tags": ["pixar", "fun"]},  # unique, first-seen order, lowercased, stripped
        {"item_id": "2", "title": "Misérables, Les (1995)", "year": "1995",
         "genres": ["Drama", "War"], "tags": None},
        {"item_id": "3", "title": "Babylon 5", "year": None, "genres": None,
         "tags": ["space"]},
        {"item_id": "4", "title": "Death Note: Desu nôto (2006–2007)", "year": "2006",
         "genres": None, "tags": None},
    ]
    assert ds.users is None


# --- bad input: each error names the file, the column and a sample row; nothing is written --


def test_unparsable_timestamp(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-100k")
    (raw / "u.data").write_text("2\t1\t4\t881250949\n1\t2\t3\tabc\n")
    assert_fails_cleanly("movielens-100k", raw, "u.data", "'timestamp'", "'abc'",
                  "line 2: '1\\t2\\t3\\tabc'")


def test_unknown_item_in_interactions(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-100k")
    with (raw / "u.data").open("a") as f:
        f.write("1\t99\t3\t881250949\n")
    assert_fails_cleanly("movielens-100k", raw, "u.data", "'item_id'", "'99' is not in u.item",
                  "row 5: user_id='1', item_id='99'")


def test_duplicate_item_id(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-100k")
    lines = (raw / "u.item").read_bytes().splitlines(keepends=True)
    (raw / "u.item").write_bytes(b"".join(lines + [lines[0]]))
    assert_fails_cleanly("movielens-100k", raw, "u.item", "'item_id'", "duplicate item_id '1'",
                  "row 4: item_id='1', title='Toy Story (1995)'")


def test_missing_column(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-latest")
    (raw / "ratings.csv").write_text("userId,movieId,rating\n1,1,4.0\n")
    assert_fails_cleanly("movielens-latest", raw, "ratings.csv", "'timestamp'", "missing",
                  "line 2: '1,1,4.0'")


def test_wrong_encoding(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-latest")  # documented UTF-8; here re-encoded as latin-1
    text = (raw / "movies.csv").read_text("utf-8").replace("–", "-")
    (raw / "movies.csv").write_bytes(text.encode("latin-1"))
    assert_fails_cleanly("movielens-latest", raw, "movies.csv", "'title'", "not valid utf-8",
                  "line 3: b'2,\"Mis\\xe9rables, Les (1995)\"")


def test_empty_file(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-100k")
    (raw / "u.data").write_text("")
    assert_fails_cleanly("movielens-100k", raw, "u.data", "'user_id'", "no rows")
    raw = raw_copy("ml-latest")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    assert_fails_cleanly("movielens-latest", raw, "ratings.csv", "'userId'", "no data rows",
                  "line 1: 'userId,movieId,rating,timestamp'")


def test_bad_genre_flag_and_unknown_code(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-100k")
    text = (raw / "u.item").read_bytes().replace(b"|0|0|0|1|1|1|", b"|0|0|0|x|1|1|", 1)
    (raw / "u.item").write_bytes(text)
    assert_fails_cleanly("movielens-100k", raw, "u.item", "'Animation'", "'x'",
                         "line 1: '1|Toy Story")
    raw = raw_copy("ml-1m")
    (raw / "users.dat").write_text("1::F::7::10::48067\n")
    assert_fails_cleanly("movielens-1m", raw, "users.dat", "'age'", "unknown code '7'",
                  "line 1: '1::F::7::10::48067'")


def test_unknown_mapping_key(raw_copy, tmp_path):
    with pytest.raises(DataError, match="unknown key.*ratings_file.*missing_timestamp"):
        prepare("movielens-1m", raw_copy("ml-1m"), tmp_path / "ds", {"rating_file": "x"})


@pytest.mark.parametrize("value", ["-1e30", "99999999999999999999"])
def test_timestamp_outside_int64(raw_copy, assert_fails_cleanly, value):
    raw = raw_copy("ml-latest")  # was stored as -2**63: first in the user's history
    ratings = raw / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("964981247", value))
    assert_fails_cleanly("movielens-latest", raw, "ratings.csv: column 'timestamp'",
                         f"cannot parse '{value}' as a whole number within int64",
                         f"line 3: '1,3,4.5,{value}'")


def test_rating_not_finite(raw_copy, assert_fails_cleanly):
    raw = raw_copy("ml-latest")
    ratings = raw / "ratings.csv"
    ratings.write_text(ratings.read_text().replace("4.5", "inf"))
    assert_fails_cleanly("movielens-latest", raw, "ratings.csv: column 'rating'", "'inf'",
                         "line 3: '1,3,inf,964981247'")


def test_ratings_file_outside_the_raw_dir(raw_copy, assert_fails_cleanly):
    assert_fails_cleanly("movielens-1m", raw_copy("ml-1m"), "mapping for movielens-1m: "
                         "'ratings_file' must name a file inside the raw dir",
                         mapping={"ratings_file": "../ml-1m/ratings.dat"})
