"""Recformer pre-training (Li et al., KDD'23): item-item contrastive loss + masked language
modelling, on the corpus of recsys.inputs.recformer_corpus.

Each epoch, every corpus sequence gives one example: a cut t >= 1 drawn uniformly from the
global torch RNG (which checkpoints keep, so a resumed run draws the same examples), history =
the items before t, target = the item at t. The history is read with a share of its key/value
tokens masked, BERT style; its pooled state must pick its target's vector (the same encoder
over the item alone, trained too) among the batch's distinct targets, and the states of the
masked tokens must name the tokens they hide:

    loss = cross_entropy(score(history, distinct targets)) + mlm_weight * MLM cross-entropy

A target that occurs twice in a batch is one candidate, so a sequence is never pushed away from
its own answer because another sequence shares it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.sequences import pad_left
from recsys.config import LossConfig
from recsys.inputs.recformer_corpus import TARGET, Corpus
from recsys.models.recformer import KEY, VALUE

# BERT's split of the selected tokens: 80 % [MASK], 10 % a random token, 10 % left unchanged
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


def mask_tokens(tokens: torch.Tensor, token_types: torch.Tensor, probability: float,
                mask_id: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, T) with a `probability` share of the KEY / VALUE ones selected (never [CLS]
    or padding) -> (masked tokens (B, T), selected (B, T) bool). Of the selected, 80 % read
    [MASK], 10 % a random token of the vocabulary, 10 % themselves; all are predicted.
    Draws come from the global torch RNG of the tokens' device (the CPU in training)."""
    text = (token_types == KEY) | (token_types == VALUE)
    draw = torch.rand(tokens.shape, device=tokens.device)  # one draw picks the selection
    selected = text & (draw < probability)  # and, scaled, the way each is masked
    share = draw / max(probability, 1e-12)  # uniform in [0, 1) given selected
    masked = tokens.clone()
    to_mask = selected & (share < MASK_SHARE)
    to_random = selected & (share >= MASK_SHARE) & (share < MASK_SHARE + RANDOM_SHARE)
    masked[to_mask] = mask_id
    masked[to_random] = torch.randint(vocab_size, (int(to_random.sum()),), device=tokens.device)
    return masked, selected


class PretrainTask(nn.Module):
    """(history, target) examples from a Corpus, the contrastive + MLM loss of each batch.

    `model` holds `.model` (a Recformer) and `.mlm_head` (a MaskedLMHead); the task trains
    both, the item side included.
    """

    def __init__(self, model: nn.Module, corpus: Corpus, loss: LossConfig, batch_size: int):
        super().__init__()
        if loss.mlm_weight > 0 and model.mlm_head is None:
            raise ValueError("train.loss.mlm_weight > 0: recformer pre-training needs the "
                             "model's mlm_head")
        self.model = model
        self.corpus = corpus
        self.loss = loss
        self.batch_size = batch_size
        self.lengths = np.array([len(s) for s in corpus.sequences], np.int64)
        self.width = min(corpus.items.max_items, int(self.lengths.max()) - 1)  # history items

    @property
    def data_sha256(self) -> dict[str, str | None]:
        """The content hash of each corpus set's dataset, by its dir (the target's own is the
        run's dataset hash): a run resumes only on the data it started with."""
        return {s.name: s.sha256 for s in self.corpus.stats if s.name != TARGET}

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(history (B, L) joint item indices left-padded with 0, targets (B,)), each corpus
        sequence once per epoch in a shuffled order."""
        order = torch.randperm(len(self.lengths)).numpy()
        # t uniform in 1..len - 1: the history is never empty and the target exists
        cuts = 1 + (torch.rand(len(self.lengths)).numpy() * (self.lengths - 1)).astype(np.int64)
        cuts = np.minimum(cuts, self.lengths - 1)  # float rounding at the top end
        sequences = self.corpus.sequences
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            history = pad_left([sequences[r][: cuts[r]] for r in rows], self.width)
            targets = np.array([sequences[r][cuts[r]] for r in rows], np.int64)
            yield torch.from_numpy(history), torch.from_numpy(targets)

    def forward(self, batch) -> torch.Tensor:
        """The contrastive + weighted MLM loss of a `batches()` batch (a scalar)."""
        history, targets = (torch.as_tensor(t).cpu() for t in batch)  # token lists are numpy
        recformer = self.model.model
        items = self.corpus.items
        device = next(self.model.parameters()).device
        tokens, types, positions, attention = items.sequences(history.numpy())
        words = recformer.backbone.get_input_embeddings().weight  # (V, dim)
        masked, selected = mask_tokens(tokens, types, self.loss.mlm_probability,
                                       self.corpus.mask_id, len(words))  # drawn on the CPU
        states = recformer.hidden_states(*(t.to(device) for t in (masked, types, positions,
                                                                  attention)))  # (B, T, dim)
        sequences = recformer.pool(states, attention.to(device))  # (B, dim)

        # duplicates of a target are one candidate: never a negative of their own sequences
        distinct, answer = torch.unique(targets, return_inverse=True)
        vectors = recformer.encode(*(t.to(device) for t in items.single_items(distinct.numpy())))
        logits = recformer.score(sequences, vectors) / self.loss.temperature  # (B, U)
        loss = F.cross_entropy(logits, answer.to(device))

        if self.loss.mlm_weight > 0 and selected.any():
            selected = selected.to(device)
            logits = self.model.mlm_head(states[selected], words)  # (N, V)
            loss = loss + self.loss.mlm_weight * F.cross_entropy(logits.float(),
                                                                 tokens.to(device)[selected])
        return loss
