import dataclasses

import torch

from recsys.config import PopularityConfig, SASRecConfig
from recsys.models import Popularity, SASRec

CONFIG = SASRecConfig(max_len=8, dim=16, layers=2, heads=2, dropout=0.0)


def test_shapes():
    model = SASRec(CONFIG, n_items=30).eval()
    history = torch.randint(1, 31, (4, 6))
    assert model(history).shape == (4, 6, 16)
    assert model.score(history).shape == (4, 31)


def test_causal_future_items_do_not_change_the_past():
    torch.manual_seed(0)
    model = SASRec(CONFIG, n_items=30).eval()
    a = torch.tensor([[3, 4, 5, 6, 7]])
    b = torch.tensor([[3, 4, 5, 9, 1]])
    with torch.no_grad():
        ha, hb = model(a), model(b)
    assert torch.allclose(ha[:, :3], hb[:, :3], atol=1e-6)
    assert not torch.allclose(ha[:, 3:], hb[:, 3:], atol=1e-4)


def test_left_padding_does_not_change_the_score():
    torch.manual_seed(0)
    model = SASRec(CONFIG, n_items=30).eval()
    with torch.no_grad():
        tight = model.score(torch.tensor([[5, 6, 7]]))
        padded = model.score(torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6]]))[:1]
    assert torch.allclose(tight, padded, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_popularity_scores_are_the_counts_for_everyone():
    counts = torch.tensor([0.0, 3.0, 1.0, 7.0])
    model = Popularity(PopularityConfig(), 3, counts)
    scores = model.score(torch.zeros(2, 1, dtype=torch.long))
    assert scores.tolist() == [counts.tolist(), counts.tolist()]
    assert not list(model.parameters())



def test_repeat_bias_scores_match_between_training_positions_and_serving():
    config = dataclasses.replace(CONFIG, repeat_bias=True)
    torch.manual_seed(0)
    model = SASRec(config, n_items=30).eval()
    with torch.no_grad():
        model.repeat.fill_(-3.0)
    items = torch.tensor([[0, 0, 4, 7, 4, 9]])
    every = torch.ones_like(items, dtype=torch.bool)
    during_training = model.position_scores(items, every)  # (6, 31)
    torch.testing.assert_close(during_training[-1], model.score(items)[0])  # the last position
    shift = during_training - model.item_scores(model(items))[0]  # (6, 31) the repeat term
    for t, seen in [(2, {4}), (3, {4, 7}), (4, {4, 7}), (5, {4, 7, 9})]:
        moved = set(torch.nonzero(shift[t, 1:] != 0).flatten().add(1).tolist())
        assert moved == seen and torch.allclose(shift[t, sorted(seen)], torch.tensor(-3.0))


def test_serving_reads_only_the_last_max_len_items_but_penalises_all_seen():
    config = dataclasses.replace(CONFIG, repeat_bias=True)
    model = SASRec(config, n_items=30).eval()
    with torch.no_grad():
        model.repeat.fill_(-1.0)
    long = torch.arange(1, 21)[None, :]  # 20 items, max_len 8
    torch.testing.assert_close(model.user_vectors(long), model.user_vectors(long[:, -8:]))
    shift = model.score(long)[0] - model.score(long[:, -8:])[0]
    torch.testing.assert_close(shift[1:13], torch.full((12,), -1.0))
    assert torch.all(shift[13:] == 0)
