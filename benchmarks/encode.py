"""Catalogue encoding speed: our `encode_texts` against sentence-transformers, same run.

    python benchmarks/encode.py --dataset amazon-industrial-scientific --limit 2000

Builds item sentences (features/text.py) for the first `--limit` items with text, then encodes
them with the same local model folder both ways: `encode_texts` (cache off) and
`SentenceTransformer(<folder>).encode` at the same batch size and max length. After a warm-up,
the two alternate for `--rounds` rounds (the machine may be shared: alternating spreads the
noise); items/s come from the median round. Ends with one JSON line; `ratio` = ours / theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only, never a download

import numpy as np  # noqa: E402
import torch  # noqa: E402

from features.text import item_sentences  # noqa: E402
from recsys.config import ItemTextConfig, TextEncoderConfig  # noqa: E402
from recsys.data import ensure_dataset, load_dataset  # noqa: E402
from recsys.inputs.text_vectors import encode_texts  # noqa: E402
from recsys.models.text_encoder import TextEncoder, bf16_supported  # noqa: E402
from recsys.runtime.report import table  # noqa: E402

# dataset folder under --data-root -> converter (recsys.data.SOURCES)
SOURCES = {
    "ml-100k": "movielens-100k", "ml-1m": "movielens-1m", "ml-latest-small": "movielens-latest",
    "amazon-industrial-scientific": "amazon-lcrec", "amazon-beauty": "amazon-s3rec",
    "amazon2018-magazine-subscriptions": "amazon-2018", "mind-small-fragment": "mind",
}


def load_sentences(args, tokenizer) -> list[str]:
    source = args.source or SOURCES.get(args.dataset)
    if source is None:
        raise SystemExit(f"unknown dataset {args.dataset!r}: pass --source (one of "
                         f"{sorted(set(SOURCES.values()))})")
    out = ensure_dataset(source, Path(args.data_root) / args.dataset,
                         Path("data/prepared") / args.dataset)
    text = ItemTextConfig()
    sentences, _ = item_sentences(load_dataset(out).items, text.attributes, text.max_tokens,
                                  text.max_length, tokenizer)
    kept = [s for s in sentences if s][: args.limit]
    if not kept:
        raise SystemExit(f"{args.dataset}: no item has text under attributes {text.attributes}")
    return kept


def timed(fn) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--dataset", default="amazon-industrial-scientific")
    parser.add_argument("--source", default=None, help="converter, if the folder name is unknown")
    parser.add_argument("--limit", type=int, default=2000, help="items to encode")
    parser.add_argument("--batch-size", type=int, default=TextEncoderConfig.batch_size)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each system")
    parser.add_argument("--model", default=None, help="local model folder (default: bundled)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variant")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    encoder = TextEncoder(TextEncoderConfig(path=args.model, cache_dir=None))
    reference = SentenceTransformer(str(encoder.path), device="cpu", local_files_only=True)
    max_length = reference.max_seq_length  # ST truncates here: ours must too, to be fair
    texts = load_sentences(args, encoder.tokenizer)
    n, bs = len(texts), args.batch_size
    lengths = np.array([len(ids) for ids in encoder.tokenize(texts, max_length)])

    systems = {
        "ours": lambda: encode_texts(encoder, texts, batch_size=bs, max_length=max_length,
                                     normalize=True, use_cache=False, bf16=False),
        "sentence-transformers": lambda: reference.encode(texts, batch_size=bs),
    }
    if bf16_supported() and not args.no_bf16:
        systems["ours bf16"] = lambda: encode_texts(
            encoder, texts, batch_size=bs, max_length=max_length, normalize=True,
            use_cache=False, bf16=True)
    encode_texts(encoder, texts[:64], batch_size=bs, use_cache=False)  # warm-up, both paths
    encode_texts(encoder, texts[:64], batch_size=bs, use_cache=False, bf16=True)
    reference.encode(texts[:64], batch_size=bs)

    seconds, outputs = {name: [] for name in systems}, {}
    names = list(systems)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            took, outputs[name] = timed(systems[name])
            seconds[name].append(took)
            print(f"round {r + 1}: {name:<22} {took:7.2f} s  {n / took:8.1f} items/s", flush=True)

    speed = {name: n / float(np.median(s)) for name, s in seconds.items()}
    theirs = outputs["sentence-transformers"]
    cosine = {name: (out * theirs).sum(1) for name, out in outputs.items()}
    rows = [(name, round(speed[name], 1), round(float(np.median(seconds[name])), 2),
             round(speed[name] / speed["sentence-transformers"], 3),
             float(np.abs(outputs[name] - theirs).max()), float(cosine[name].mean()))
            for name in systems]
    print(table(("system", "items/s", "median s", "ratio", "max |diff|", "mean cos"), rows))
    print(f"{n} items, tokens/item mean {lengths.mean():.1f} max {lengths.max()}, batch {bs}, "
          f"max_length {max_length}, torch threads {torch.get_num_threads()}")
    result = {
        "dataset": args.dataset, "items": n, "batch_size": bs, "max_length": max_length,
        "rounds": args.rounds, "threads": torch.get_num_threads(),
        "tokens_mean": round(float(lengths.mean()), 1),
        "items_per_s": round(speed["ours"], 2),
        "st_items_per_s": round(speed["sentence-transformers"], 2),
        "ratio": round(speed["ours"] / speed["sentence-transformers"], 3),
        "max_abs_diff": float(np.abs(outputs["ours"] - theirs).max()),
        "mean_cosine": round(float(cosine["ours"].mean()), 6),
    }
    if "ours bf16" in systems:
        result.update({
            "bf16_items_per_s": round(speed["ours bf16"], 2),
            "bf16_ratio": round(speed["ours bf16"] / speed["sentence-transformers"], 3),
            "bf16_mean_cosine": round(float(cosine["ours bf16"].mean()), 6),
        })
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
