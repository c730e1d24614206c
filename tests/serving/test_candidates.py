"""CandidateLookup: exported candidates by user, read row group by row group."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.candidates import CandidateLookup
from serving.store import StoreError


def _expected(user, k):
    return [{"rank": r, "item_id": f"{user}-r{r}", "score": pytest.approx(1.0 / r),
             "stage": "retrieval"} for r in range(1, k + 1)]


def test_every_user_gets_its_rows_best_first_across_row_groups_and_parts(make_candidates):
    lookup = CandidateLookup(make_candidates(users=7, k=5, part_users=3, row_group_size=4),
                             verify=True)
    for u in range(7):  # 5 rows a user over row groups of 4: most users span two groups
        assert lookup.get(f"u{u}") == _expected(f"u{u}", 5)
    assert lookup.get("u4", k=2) == _expected("u4", 2)
    assert lookup.get("u4", k=99) == _expected("u4", 5)
    assert lookup.meta == {"path": str(lookup.path), "run_id": "run1", "users": 7, "rows": 35,
                           "parts": 3, "k": 5}
    assert "u6" in lookup and "u7" not in lookup


def test_unknown_user_and_bad_k(make_candidates):
    lookup = CandidateLookup(make_candidates())
    with pytest.raises(KeyError, match="'nobody'"):
        lookup.get("nobody")
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            lookup.get("u1", k=k)


def test_an_unfinished_or_damaged_export_is_refused(make_candidates, tmp_path):
    out = make_candidates()
    manifest = json.loads((out / "_manifest.json").read_text())
    (out / "_manifest.json").unlink()
    with pytest.raises(StoreError, match="not a finished candidates export"):
        CandidateLookup(out)
    manifest["parts"][1]["rows"] = 3
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="holds 15 rows, the manifest says 3"):
        CandidateLookup(out)
    manifest["parts"][1]["rows"] = 15
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "part-00000.parquet").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="part-00000"):
        CandidateLookup(out)


def test_a_user_in_two_places_is_refused(make_candidates):
    out = make_candidates(users=4, part_users=2)
    table = pq.read_table(out / "part-00001.parquet")
    users = pa.array(["u0"] * table.num_rows)
    pq.write_table(table.set_column(0, "user_id", users), out / "part-00001.parquet")
    with pytest.raises(StoreError, match="'u0' appears twice"):
        CandidateLookup(out)


def test_refresh_reopens_only_when_the_manifest_changed(make_candidates, tmp_path):
    out = make_candidates(users=7, k=5)
    lookup = CandidateLookup(out)
    assert lookup.get("u1") == _expected("u1", 5)
    assert lookup.refresh() is False  # same manifest: nothing reopened
    make_candidates(users=9, k=3, out=out)  # a new export written over this one, in place
    with pytest.raises(StoreError, match="changed since it was indexed"):
        lookup.get("u4")  # its part was replaced: no rows through the stale index
    assert lookup.refresh() is True
    assert lookup.get("u4") == _expected("u4", 3) and "u8" in lookup
    assert lookup.meta["users"] == 9 and lookup.meta["k"] == 3
    assert lookup.refresh() is False


def test_refresh_follows_a_switched_symlink_and_keeps_the_old_export_on_errors(
        make_candidates, tmp_path):
    live = tmp_path / "live"
    live.symlink_to(make_candidates(users=7, k=5, out=tmp_path / "a"))
    lookup = CandidateLookup(live)
    new = make_candidates(users=9, k=3, out=tmp_path / "b")
    (tmp_path / "tmp-link").symlink_to(new)
    (tmp_path / "tmp-link").replace(live)  # an atomic switch, as for the store's CURRENT
    assert lookup.get("u4") == _expected("u4", 5)  # still the export it opened, whole
    assert lookup.refresh() is True
    assert lookup.get("u4") == _expected("u4", 3) and "u8" in lookup
    (new / "_manifest.json").unlink()  # the next export is half written
    with pytest.raises(StoreError, match="_manifest.json"):
        lookup.refresh()
    assert lookup.get("u8") == _expected("u8", 3)  # the last good one keeps answering


def test_a_refused_export_is_not_read_again_until_its_files_change(make_candidates, monkeypatch):
    """Each refresh tick re-read and re-indexed a broken new export (its manifest text differs
    from the live one's) to repeat the same error; now it is read once, and again only when a
    file of the export dir changes, so a fixed manifest is then picked up."""
    import serving.candidates

    out = make_candidates(users=7, k=5)
    lookup = CandidateLookup(out)
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["run_id"], manifest["parts"][1]["rows"] = "run2", 3
    (out / "_manifest.json").write_text(json.dumps(manifest))  # a new, broken manifest
    opened = []
    real = serving.candidates._Export
    monkeypatch.setattr(serving.candidates, "_Export",
                        lambda *a: opened.append(a[0]) or real(*a))
    for _ in range(5):
        with pytest.raises(StoreError, match="holds 15 rows, the manifest says 3"):
            lookup.refresh()
    assert len(opened) == 1
    assert lookup.meta["run_id"] == "run1" and lookup.get("u4") == _expected("u4", 5)
    manifest["parts"][1]["rows"] = 15
    (out / "_manifest.json").write_text(json.dumps(manifest))  # fixed
    assert lookup.refresh() is True and len(opened) == 2
    assert lookup.meta["run_id"] == "run2" and lookup.refresh() is False and len(opened) == 2


def test_a_refused_export_is_read_again_once_a_part_is_fixed(make_candidates):
    """The manifest text alone does not key a refusal: a part rewritten under the same
    manifest (or made readable) is a change, and the export is read again."""
    out = make_candidates(users=7, k=5)
    lookup = CandidateLookup(out)
    make_candidates(users=7, k=3, out=out)  # a new export ...
    text = (out / "_manifest.json").read_text()
    (out / "part-00000.parquet").write_bytes(b"garbage")  # ... with a damaged part
    for _ in range(2):
        with pytest.raises(StoreError, match="part-00000"):
            lookup.refresh()
    make_candidates(users=7, k=3, out=out)  # the part written again
    assert (out / "_manifest.json").read_text() == text  # under the same manifest
    assert lookup.refresh() is True and lookup.get("u0") == _expected("u0", 3)
