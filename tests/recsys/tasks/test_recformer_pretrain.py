"""Recformer pre-training task: example cuts, BERT-style masking of key/value tokens, the
in-batch contrastive loss with duplicate targets, the MLM head, learning and resume safety
(the bundled MiniLM cut to one layer)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.config import LossConfig
from recsys.config.recformer import RecformerConfig
from recsys.inputs.recformer import load_tokenizer
from recsys.inputs.recformer_corpus import build_corpus
from recsys.models.recformer import CLS, KEY, PAD, VALUE, MaskedLMHead, Recformer
from recsys.tasks.recformer_pretrain import PretrainTask, mask_tokens

CONFIG = RecformerConfig(layers=1, attributes=("title", "brand"), max_attr_tokens=6,
                         max_item_tokens=10, max_tokens=48, max_items=4, max_item_positions=8)
ITEMS = pd.DataFrame({
    "item_id": [f"i{k}" for k in range(8)],
    "title": ["red drill", "steel staple", "packing tape", "glue gun", "hand saw", "spirit level",
              "claw hammer", "wood screws"],
    "brand": ["bosch", "stanley", "scotch", "bosch", "stanley", "stanley", "estwing", "spax"],
})
# each user walks the catalogue in order: the next item is learnable from the last one
SEQUENCES = [np.arange(start, start + length) % 8 + 1
             for start, length in [(0, 5), (2, 4), (4, 6), (6, 3), (1, 5), (3, 4), (5, 3), (7, 5)]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CONFIG, ITEMS, SEQUENCES, load_tokenizer(CONFIG))


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return Recformer(CONFIG)


class Retriever(nn.Module):
    """Stand-in for the recipe's RecformerRetriever: the attributes the task reads."""

    def __init__(self, model, catalogue, mlm_head):
        super().__init__()
        self.model, self.catalogue, self.mlm_head = model, catalogue, mlm_head


def task_for(backbone, corpus, batch_size=4, **loss) -> PretrainTask:
    torch.manual_seed(0)  # the fresh MLM head
    model = Retriever(backbone, corpus.items, MaskedLMHead.matching(backbone))
    return PretrainTask(model, corpus, LossConfig(**loss), batch_size)


def test_masking_touches_key_value_tokens_only_at_the_configured_share():
    generator = torch.Generator().manual_seed(0)
    types = torch.randint(4, (400, 100), generator=generator)  # CLS, KEY, VALUE, PAD mixed
    tokens = torch.randint(1000, 2000, types.shape, generator=generator)
    torch.manual_seed(0)
    masked, selected = mask_tokens(tokens, types, 0.15, mask_id=103, vocab_size=30522)
    text = (types == KEY) | (types == VALUE)
    assert not selected[~text].any()
    assert torch.equal(masked[~selected], tokens[~selected])
    share = selected.sum().item() / text.sum().item()
    assert 0.14 < share < 0.16  # about 3,000 draws of 20,000
    n = selected.sum().item()
    as_mask = (masked[selected] == 103).sum().item() / n
    kept = (masked[selected] == tokens[selected]).sum().item() / n
    assert 0.77 < as_mask < 0.83 and 0.08 < kept < 0.12  # the rest: random tokens
    assert masked[types == CLS].equal(tokens[types == CLS])
    assert masked[types == PAD].equal(tokens[types == PAD])
    torch.manual_seed(0)
    again, _ = mask_tokens(tokens, types, 0.15, mask_id=103, vocab_size=30522)
    assert torch.equal(masked, again)  # seeded: the same masks


def test_each_sequence_gives_one_example_per_epoch(backbone, corpus):
    task = task_for(backbone, corpus, batch_size=3)
    torch.manual_seed(1)
    batches = list(task.batches())
    assert len(batches) == len(task) == 3
    seen = []
    for history, targets in batches:
        for row, target in zip(history.numpy(), targets.numpy(), strict=True):
            items = row[row > 0]
            # history + target are a window of some corpus sequence, the history not empty
            match = [s for s in corpus.sequences
                     if any(np.array_equal(s[t - len(items) : t + 1], [*items, target])
                            for t in range(len(items), len(s)))]
            assert len(items) >= 1 and match
            seen.append(int(target))
    assert len(seen) == len(corpus.sequences)


def test_batches_repeat_under_the_same_seed(backbone, corpus):
    task = task_for(backbone, corpus)

    def epoch(seed):
        torch.manual_seed(seed)
        return [(h.tolist(), t.tolist()) for h, t in task.batches()]

    assert epoch(5) == epoch(5)  # a resumed run (RNG restored) draws the same batches
    assert epoch(5) != epoch(6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_duplicate_targets_are_one_candidate_not_a_negative(corpus, pooling):
    config = replace(CONFIG, pooling=pooling)
    torch.manual_seed(0)
    recformer = Recformer(config)
    task = task_for(recformer, corpus, mlm_probability=0.0, mlm_weight=0.0).eval()
    history = torch.tensor([[0, 1, 2], [0, 4, 5], [3, 4, 5], [0, 0, 7]])
    targets = torch.tensor([3, 6, 6, 8])  # rows 1 and 2 share their answer
    with torch.no_grad():
        loss = task((history, targets)).item()
        users = recformer.encode(*corpus.items.sequences(history.numpy()))  # (4, dim)
        items = recformer.encode(*corpus.items.single_items([3, 6, 8]))  # (3, dim)
        temperature = task.loss.temperature
        logits = recformer.score(users, items) / temperature  # (4, 3)
        naive = F.cross_entropy(recformer.score(users, recformer.encode(
            *corpus.items.single_items(targets.numpy()))) / temperature, torch.arange(4)).item()
    # each row against the batch's distinct items: item 6 is a negative of rows 0 and 3 once,
    # and of neither row 1 nor row 2
    expected = -torch.stack([logits[r].log_softmax(0)[c]
                             for r, c in enumerate([0, 1, 1, 2])]).mean().item()
    assert loss == pytest.approx(expected, rel=1e-4)
    assert abs(loss - naive) > 1e-3  # the diagonal of all 4 would push rows 1, 2 off item 6


def test_mlm_head_is_tied_to_the_word_embeddings(backbone):
    head = MaskedLMHead.matching(backbone)
    words = backbone.backbone.get_input_embeddings().weight
    states = torch.randn(5, backbone.dim)
    logits = head(states, words)
    assert logits.shape == (5, words.shape[0])
    logits[:, 7].sum().backward()
    assert words.grad[7].abs().sum() > 0 and words.grad[8].abs().sum() == 0
    words.grad = None


def test_mlm_term_predicts_the_masked_tokens_with_its_weight(backbone, corpus):
    history, targets = torch.tensor([[1, 2, 3], [0, 5, 6]]), torch.tensor([4, 7])
    losses = []
    for weight in (0.0, 0.5):
        task = task_for(backbone, corpus, mlm_probability=0.5, mlm_weight=weight).eval()
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(task((history, targets)).item())
    # by hand, with the same masks: the states of the masked input name the original tokens
    tokens, types, positions, attention = corpus.items.sequences(history.numpy())
    words = backbone.backbone.get_input_embeddings().weight
    torch.manual_seed(3)
    masked, selected = mask_tokens(tokens, types, 0.5, corpus.mask_id, len(words))
    with torch.no_grad():
        states = backbone.hidden_states(masked, types, positions, attention)
        mlm = F.cross_entropy(task.model.mlm_head(states[selected], words), tokens[selected])
    assert selected.sum() > 5
    assert losses[1] - losses[0] == pytest.approx(0.5 * mlm.item(), rel=1e-4)


def test_loss_decreases_when_trained(corpus):
    # mean pooling: a MiniLM cut to one layer gives nearly the same [CLS] state to every input
    # (cosine > 0.9998), a flat start that needs far more steps than a unit test has
    config = replace(CONFIG, pooling="mean")
    torch.manual_seed(0)
    recformer = Recformer(config)
    model = Retriever(recformer, corpus.items, MaskedLMHead.matching(recformer))
    task = PretrainTask(model, corpus, LossConfig(), batch_size=8)
    contrastive = PretrainTask(model, corpus, LossConfig(mlm_probability=0.0, mlm_weight=0.0), 8)
    batch = next(iter(task.batches()))
    chance = np.log(len(np.unique(batch[1])))  # the contrastive loss of equal scores

    def losses():
        torch.manual_seed(1)  # the same masks each time
        with torch.no_grad():
            return task.eval()(batch).item(), contrastive.eval()(batch).item()

    before = losses()
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-4)
    task.train()
    for _ in range(20):  # fresh masks and dropout each step
        optimizer.zero_grad()
        task(batch).backward()
        optimizer.step()
    after = losses()
    assert after[0] < 0.5 * before[0], (before, after)
    assert after[1] < 0.8 * chance, (before, after, chance)  # it tells the targets apart


def test_mlm_head_required_when_weighted(backbone, corpus):
    with pytest.raises(ValueError, match="mlm_weight > 0"):
        PretrainTask(Retriever(backbone, corpus.items, None), corpus, LossConfig(), 4)
