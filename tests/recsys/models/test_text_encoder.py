"""Text encoder on a tiny random BERT saved to disk; one slow test against sentence-transformers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsys.config import TextEncoderConfig
from recsys.inputs import text_vectors as tv
from recsys.inputs.text_vectors import encode_texts
from recsys.models import text_encoder as te
from recsys.models.text_encoder import TextEncoder, mean_pool

TEXTS = ["hello world", "red steel drill kit " * 6, "title staple", "brand x", "category kit red",
         "zebra quartz jumps over the lazy dog", ""]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    return TextEncoderConfig(path=str(tiny_model_dir), batch_size=2, cache_dir=str(tmp_path / "c"))


@pytest.fixture
def encoder(config):
    torch.manual_seed(1)
    return TextEncoder(config)


class ForwardCounter:
    """Counts rows that go through the encoder's forward (a pre-forward hook)."""

    def __init__(self, module):
        self.rows = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.rows += args[0].shape[0]


def one_by_one(encoder, texts):
    return np.stack([encode_texts(encoder, [t], use_cache=False)[0] for t in texts])


def test_forward_shapes_and_projection(config):
    encoder = TextEncoder(config)
    ids = torch.randint(5, 20, (3, 7))
    assert encoder(ids, torch.ones_like(ids)).shape == (3, 32) and encoder.dim == 32
    projected = TextEncoder(dataclasses.replace(config, projection_dim=8))
    assert projected(ids, torch.ones_like(ids)).shape == (3, 8) and projected.dim == 8
    assert encode_texts(projected, TEXTS, use_cache=False).shape == (len(TEXTS), 8)
    assert encoder.max_length == 64  # no sentence-transformers config: the position limit


def test_mean_pool_ignores_padded_positions():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]]])  # (1, 3, 2), last is padding
    assert mean_pool(tokens, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert mean_pool(tokens, torch.tensor([[0, 0, 0]])).tolist() == [[0.0, 0.0]]


def test_same_vector_alone_and_in_a_padded_batch(encoder):
    encoder.eval()
    batch = encoder.tokenizer(["hello world", "red steel drill kit staple title"], padding=True,
                              return_tensors="pt")
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    alone = encoder.tokenizer(["hello world"], return_tensors="pt")
    with torch.inference_mode():
        padded = encoder(batch["input_ids"], batch["attention_mask"])[0]
        single = encoder(alone["input_ids"], alone["attention_mask"])[0]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-5)


def test_order_restored_after_length_sorting(encoder):
    counter = ForwardCounter(encoder)
    together = encode_texts(encoder, TEXTS, use_cache=False)
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), 32)
    assert counter.rows == len(TEXTS)
    np.testing.assert_allclose(together, one_by_one(encoder, TEXTS), atol=1e-5)


def test_duplicates_encoded_once_and_normalize(encoder):
    counter = ForwardCounter(encoder)
    out = encode_texts(encoder, ["kit", "red", "kit", "kit"], use_cache=False, normalize=True)
    assert counter.rows == 2
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert encode_texts(encoder, [], use_cache=False).shape == (0, 32)


def test_encode_is_deterministic_and_keeps_training_mode(encoder):
    encoder.train()  # dropout on: encode_texts must switch it off and back
    first = encode_texts(encoder, TEXTS, use_cache=False)
    assert encoder.training
    np.testing.assert_array_equal(first, encode_texts(encoder, TEXTS, use_cache=False))


def test_long_text_truncated_to_max_length(encoder):
    long = "hello " * 200
    assert len(encoder.tokenize([long])[0]) == 64
    assert len(encoder.tokenize([long], max_length=10)[0]) == 10
    np.testing.assert_allclose(encode_texts(encoder, [long], use_cache=False),
                               encode_texts(encoder, ["hello " * 62], use_cache=False), atol=1e-6)


def test_cache_hit_miss_and_partial_reencode(encoder, config, tmp_path):
    counter = ForwardCounter(encoder)
    first = encode_texts(encoder, TEXTS)
    assert counter.rows == len(TEXTS)
    parts = list((tmp_path / "c").rglob("*"))
    assert parts and all(p.suffix == ".safetensors" for p in parts if p.is_file())

    again = encode_texts(encoder, TEXTS)  # unchanged catalogue: no forward pass at all
    assert counter.rows == len(TEXTS)
    np.testing.assert_array_equal(again, first)

    changed = [*TEXTS[:2], "kit kit", *TEXTS[3:]]
    third = encode_texts(encoder, changed)
    assert counter.rows == len(TEXTS) + 1  # only the changed text
    np.testing.assert_array_equal(np.delete(third, 2, 0), np.delete(first, 2, 0))
    np.testing.assert_allclose(third[2], one_by_one(encoder, ["kit kit"])[0], atol=1e-5)

    fresh = TextEncoder(config)  # same folder, same weights: the same key
    assert fresh.fingerprint() == encoder.fingerprint()
    fresh_counter = ForwardCounter(fresh)
    encode_texts(fresh, TEXTS)
    assert fresh_counter.rows == 0


def test_cache_key_changes_with_weights_and_settings(encoder):
    before = encoder.fingerprint()
    assert encoder.fingerprint("max_length=10") != before
    with torch.no_grad():
        encoder.backbone.encoder.layer[0].output.dense.bias[0] += 1e-3
    assert encoder.fingerprint() != before
    counter = ForwardCounter(encoder)
    encode_texts(encoder, TEXTS)  # a cache filled by other weights is not used
    assert counter.rows == len(TEXTS)


def test_cache_merges_parts(encoder, tmp_path, monkeypatch):
    monkeypatch.setattr("recsys.inputs.text_cache.MAX_PARTS", 2)
    for i in range(4):
        encode_texts(encoder, [f"kit {i}", "hello"])
    assert len(list((tmp_path / "c").rglob("part-*.safetensors"))) <= 2
    counter = ForwardCounter(encoder)
    encode_texts(encoder, [f"kit {i}" for i in range(4)])
    assert counter.rows == 0


def test_bf16_only_where_supported(encoder, monkeypatch):
    full = encode_texts(encoder, TEXTS, use_cache=False, normalize=True)
    monkeypatch.setattr(tv, "bf16_supported", lambda: False)  # falls back to float32 exactly
    np.testing.assert_array_equal(encode_texts(encoder, TEXTS, use_cache=False, normalize=True,
                                               bf16=True), full)
    monkeypatch.setattr(tv, "bf16_supported", lambda: True)  # autocast runs on any CPU torch
    half = encode_texts(encoder, TEXTS, use_cache=False, normalize=True, bf16=True)
    assert half.dtype == np.float32 and (half * full).sum(1).min() > 0.99


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "absent")))


def test_bundled_model_folder_is_found():
    pytest.importorskip(te.BUNDLED_PACKAGE)
    assert (te.bundled_model_path() / "model.safetensors").is_file()


@pytest.mark.slow
def test_bundled_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    path = te.bundled_model_path()
    ours = TextEncoder(TextEncoderConfig(cache_dir=None))
    reference = st.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    texts = ["title Toy Story (1995) genres Animation, Children's, Comedy",
             "title Stanley TRA708T Sharpshooter 1/2-Inch Leg Length Staples brand Stanley"]
    expected = reference.encode(texts, batch_size=8)  # its pipeline normalises
    got = encode_texts(ours, texts, normalize=True, use_cache=False)
    assert ours.max_length == reference.max_seq_length == 256
    assert (got * expected).sum(1).min() > 1 - 1e-4
    np.testing.assert_allclose(got, expected, atol=1e-5)
