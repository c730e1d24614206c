import numpy as np
import pytest

from features.ids import PAD, IdMap


def test_indices_start_at_one_in_first_seen_order():
    ids = IdMap(["b", "a", "b", "c"])
    assert list(ids.ids) == ["b", "a", "c"]
    assert ids.index(["a", "c", "b"]).tolist() == [2, 3, 1]
    assert ids.size_with_pad == 4
    assert list(ids.lookup(np.array([3, 1]))) == ["c", "b"]


def test_unknown_ids_raise_or_map_to_pad():
    ids = IdMap(["x", "y"])
    with pytest.raises(KeyError, match="1 unknown ids"):
        ids.index(["x", "zz"])
    assert ids.index(["zz", "y"], missing="pad").tolist() == [PAD, 2]


def test_lookup_rejects_padding_and_out_of_range():
    ids = IdMap(["x"])
    with pytest.raises(IndexError):
        ids.lookup(np.array([0]))
    with pytest.raises(IndexError):
        ids.lookup(np.array([2]))
