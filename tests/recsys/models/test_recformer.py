"""Recformer model: the bundled MiniLM cut to one layer, and a tiny random Longformer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModel, LongformerConfig, LongformerModel

from recsys.config.recformer import RecformerConfig
from recsys.config.sections import _Invalid
from recsys.models.recformer import CLS, KEY, PAD, VALUE, Recformer
from recsys.models.text_encoder import mean_pool

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return Recformer(RecformerConfig(layers=1, max_tokens=64, max_item_tokens=16,
                                     max_items=4, max_item_positions=8)).eval()


@pytest.fixture(scope="module")
def longformer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-longformer")
    torch.manual_seed(0)
    config = LongformerConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, attention_window=4,
                              max_position_embeddings=64 + 2, pad_token_id=1)
    LongformerModel(config).save_pretrained(path)
    return path


def batch(tokens, types, positions, mask=None):
    """RecformerInputs-shaped tensors from nested lists (mask: all ones by default)."""
    tensors = [torch.tensor(x, dtype=torch.int64) for x in (tokens, types, positions)]
    mask = torch.ones_like(tensors[0]) if mask is None else torch.tensor(mask)
    return (*tensors, mask)


# [CLS] then item 1 (key, value, value) then item 2 (key, value); a second row with padding
TWO = batch([[101, 2516, 4167, 3231, 4435, 2417], [101, 2516, 7592, 0, 0, 0]],
            [[CLS, KEY, VALUE, VALUE, KEY, VALUE], [CLS, KEY, VALUE, PAD, PAD, PAD]],
            [[0, 1, 1, 1, 2, 2], [0, 1, 1, 0, 0, 0]],
            [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


def test_encode_and_score_shapes(minilm):
    with torch.no_grad():
        vectors = minilm.encode(*TWO)
        scores = minilm.score(vectors, torch.randn(5, minilm.dim))
    assert vectors.shape == (2, 384) and minilm.dim == 384
    assert scores.shape == (2, 5)
    assert torch.isfinite(scores).all()


def test_scores_are_cosines(minilm):
    torch.manual_seed(1)
    users, items = torch.randn(4, 384) * 30, torch.randn(7, 384)
    scores = minilm.score(users, items)
    bound = 1.0
    assert scores.abs().max() <= bound + 1e-4
    same = minilm.score(items, items).diagonal()  # an item against itself: cosine 1
    assert torch.allclose(same, torch.full((7,), bound), atol=1e-3)
    assert torch.allclose(minilm.score(-items, items).diagonal(), -same, atol=1e-4)


def test_backbone_cut_to_layers_keeps_its_weights(minilm):
    full = AutoModel.from_pretrained(minilm.path, local_files_only=True)
    assert len(minilm.backbone.encoder.layer) == 1 and minilm.backbone.config.num_hidden_layers == 1
    assert minilm.backbone.pooler is None
    kept = minilm.backbone.encoder.layer[0].attention.self.query.weight
    assert torch.equal(kept, full.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(minilm.backbone.get_input_embeddings().weight,
                       full.get_input_embeddings().weight)


def test_embeddings_are_word_position_type_item_position_once(minilm):
    """The backbone's embedding output = LayerNorm(word + token position + BERT's type-0 row
    + new type + item position): each table added exactly once."""
    tokens, types, positions, mask = TWO
    seen = {}

    def keep(module, args, output):
        seen["out"] = output

    hook = minilm.backbone.embeddings.register_forward_hook(keep)
    with torch.no_grad():
        minilm.encode(tokens, types, positions, mask)
    hook.remove()
    emb = minilm.backbone.embeddings
    expected = emb.LayerNorm(emb.word_embeddings(tokens)
                             + emb.position_embeddings(torch.arange(tokens.shape[1]))
                             + emb.token_type_embeddings.weight[0]
                             + minilm.token_types(types) + minilm.item_positions(positions))
    assert torch.allclose(seen["out"], expected, atol=1e-5)


def test_token_type_and_item_position_tables_change_the_vector(minilm):
    tokens, types, positions, mask = TWO
    with torch.no_grad():
        base = minilm.encode(tokens, types, positions, mask)
        retyped = minilm.encode(tokens, torch.where(types == KEY, VALUE, types), positions, mask)
        moved = minilm.encode(tokens, types, torch.where(positions == 2, 3, positions), mask)
    assert not torch.allclose(base[0], retyped[0], atol=1e-4)
    assert not torch.allclose(base[0], moved[0], atol=1e-4)
    assert torch.allclose(base[1], moved[1])  # row 2 has no item 2: nothing moved
    grads = torch.autograd.grad(minilm.encode(*TWO).sum(),
                                [minilm.token_types.weight, minilm.item_positions.weight])
    assert all(g.abs().sum() > 0 for g in grads)


def test_zero_new_tables_start_as_the_backbones_own_encoder(minilm):
    zeros = Recformer(dataclasses.replace(minilm.config, new_tables="zeros")).eval()
    assert not zeros.token_types.weight.any() and not zeros.item_positions.weight.any()
    tokens, types, positions, mask = TWO
    with torch.no_grad():
        ours = zeros.encode(tokens, types, positions, mask)
        own = zeros.backbone(input_ids=tokens, attention_mask=mask).last_hidden_state
        randomised = minilm.encode(tokens, types, positions, mask)
    assert torch.allclose(ours, mean_pool(own, mask), atol=1e-5)
    assert not torch.allclose(ours, randomised, atol=1e-3)  # the default tables move it
    grads = torch.autograd.grad(zeros.encode(*TWO).sum(),
                                [zeros.token_types.weight, zeros.item_positions.weight])
    assert all(g.abs().sum() > 0 for g in grads)  # still trained


def test_padding_does_not_change_a_vector(minilm):
    tokens, types, positions, mask = (t[1:, :3] for t in TWO)  # row 2 without its padding
    with torch.no_grad():
        alone = minilm.encode(tokens, types, positions, mask)
        padded = minilm.encode(*TWO)[1:]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_mean_pooling_averages_real_tokens(minilm):
    mean = Recformer(dataclasses.replace(minilm.config, pooling="mean"))
    mean.load_state_dict(minilm.state_dict())
    mean.eval()
    with torch.no_grad():
        states = mean.hidden_states(*TWO)
        vectors = mean.encode(*TWO)
    assert torch.allclose(vectors[1], states[1, :3].mean(0), atol=1e-5)


def test_tiny_longformer_loads_and_encodes(longformer_dir):
    model = Recformer(RecformerConfig(backbone=str(longformer_dir), layers=1, max_tokens=32,
                                      max_item_tokens=8, max_items=4, max_item_positions=8))
    model.eval()
    assert model.dim == 32 and model.backbone.config.attention_window == [4]
    tokens = torch.randint(5, 120, (2, 7))
    tokens[1, 4:] = 1  # padding id
    types = torch.tensor([[CLS, KEY, VALUE, VALUE, KEY, VALUE, VALUE],
                          [CLS, KEY, VALUE, VALUE, PAD, PAD, PAD]])
    positions = torch.tensor([[0, 1, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 0, 0]])
    mask = (types != PAD).long()
    with torch.no_grad():
        vectors = model.encode(tokens, types, positions, mask)
        alone = model.encode(tokens[1:, :4], types[1:, :4], positions[1:, :4], mask[1:, :4])
        moved = model.encode(tokens, types, torch.where(positions == 2, 3, positions), mask)
        far = tokens.clone()
        far[0, 6] = 7 if far[0, 6] != 7 else 8  # beyond [CLS]'s local window (2 each side)
        changed = model.encode(far, types, positions, mask)
    assert vectors.shape == (2, 32) and torch.isfinite(vectors).all()
    assert torch.allclose(vectors[1:], alone, atol=1e-5)  # window padding and batch padding
    assert not torch.allclose(vectors[0], moved[0], atol=1e-4)
    assert not torch.allclose(vectors[0], changed[0], atol=1e-4)  # [CLS] attends globally


def test_longformer_position_limit_checked(longformer_dir):
    # 66 positions - (pad 1 + 1) = 64, a multiple of the window 4: 65 tokens cannot fit
    with pytest.raises(ValueError, match="recformer.max_tokens 65"):
        Recformer(RecformerConfig(backbone=str(longformer_dir), max_tokens=65))


def test_bad_backbone_and_layers(tmp_path):
    with pytest.raises(FileNotFoundError, match="recformer.backbone .*not a Hugging Face model"):
        Recformer(RecformerConfig(backbone=str(tmp_path)))
    with pytest.raises(ValueError, match="recformer.layers 7: .* has only 6"):
        Recformer(RecformerConfig(layers=7))
    with pytest.raises(ValueError, match="recformer.max_tokens 513"):
        Recformer(RecformerConfig(max_tokens=513))


def test_config_rules_name_the_key():
    with pytest.raises(_Invalid) as err:
        RecformerConfig(max_items=50, max_item_positions=50)
    assert err.value.key == "max_item_positions"
    with pytest.raises(_Invalid) as err:
        RecformerConfig(max_tokens=64, max_item_tokens=64)
    assert err.value.key == "max_item_tokens"


@pytest.mark.parametrize("section, key", [
    ({"task": "pretrain", "init_from": "runs/x"}, "model.recformer.init_from"),
    ({"task": "finetune", "pretrain_corpus": [{"source": "s", "raw": "r", "dir": "d"}]},
     "model.recformer.pretrain_corpus"),
])
def test_keys_the_task_would_ignore_are_refused_naming_them(section, key):
    from recsys.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        config_from_dict({"model": {"name": "recformer", "recformer": section}})
