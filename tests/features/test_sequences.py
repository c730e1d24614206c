import numpy as np

from features.sequences import length_batches, next_item_pairs, pad_left, training_windows


def test_pad_left_keeps_most_recent_and_trims_width():
    out = pad_left([np.array([1, 2, 3, 4]), np.array([5]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]
    assert pad_left([np.array([7])], 50).shape == (1, 1)  # no all-padding columns


def test_next_item_pairs_shift_by_one():
    inputs, targets = next_item_pairs([np.array([1, 2, 3]), np.array([4, 5])], 5)
    assert inputs.tolist() == [[1, 2], [0, 4]]
    assert targets.tolist() == [[2, 3], [0, 5]]


def test_length_batches_group_similar_lengths_and_keep_every_row():
    lengths = np.array([5, 1, 4, 2, 3, 1])
    order = np.array([3, 0, 5, 2, 1, 4])
    batches = length_batches(order, lengths, 2)
    assert [b.tolist() for b in batches] == [[5, 1], [3, 4], [2, 0]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))


def test_training_windows_cover_every_transition_once():
    history = np.arange(1, 11)  # 9 transitions
    windows = training_windows([history, np.array([5])], 4)
    assert [w.tolist() for w in windows] == [[6, 7, 8, 9, 10], [2, 3, 4, 5, 6], [1, 2]]
    pairs = {(a, b) for w in windows for a, b in zip(w[:-1], w[1:], strict=True)}
    assert len(pairs) == 9
