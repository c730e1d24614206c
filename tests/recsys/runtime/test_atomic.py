import pytest

from recsys.runtime.atomic import atomic_path, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"ndcg@10": 0.1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "ndcg@10": 0.1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_temp_keeps_the_suffix_so_writers_can_pick_the_format(tmp_path):
    with atomic_path(tmp_path / "curve.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "curve.png").read_bytes() == b"png"
