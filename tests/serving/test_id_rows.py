"""IdRows: the id -> row table under EmbeddingStore.get, by hash and in its exact dict fallback."""

import numpy as np
import pytest

from serving.id_rows import IdRows


class OneHash(str):
    """A str whose hash is always 7: a store of them has colliding hashes."""

    def __hash__(self):
        return 7


def test_rows_of_known_unknown_and_repeated_ids():
    ids = [f"item{i}" for i in range(1000)]
    table = IdRows(ids)
    assert table.hashed
    asked = ["item999", "nope", "item0", "item999", "item5"]
    np.testing.assert_array_equal(table.rows(asked), [999, -1, 0, 999, 5])
    assert table.rows([]).shape == (0,)
    assert [table.row(i) for i in asked] == [999, -1, 0, 999, 5]
    fresh = ["item" + str(7)]  # a new str object equal to a stored one
    assert table.rows(fresh).tolist() == [7] and table.row(fresh[0]) == 7


def test_colliding_hashes_fall_back_to_an_exact_dict():
    ids = [OneHash(f"i{i}") for i in range(5)]
    table = IdRows(ids)
    assert not table.hashed  # one hash for five ids: the hash table would be ambiguous
    np.testing.assert_array_equal(table.rows([OneHash("i3"), OneHash("x"), OneHash("i0")]),
                                  [3, -1, 0])
    assert table.row(OneHash("i4")) == 4 and table.row(OneHash("x")) == -1


def test_unhashable_ids_raise_type_error():
    table = IdRows(["a", "b"])
    with pytest.raises(TypeError):
        table.rows(["a", ["b"]])
    with pytest.raises(TypeError):
        table.row(["b"])
