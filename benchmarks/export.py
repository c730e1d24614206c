"""Candidate export throughput and memory against raw faiss search, on a synthetic catalogue.

    python benchmarks/export.py                                  # 100k items x 300k users, d=64
    python benchmarks/export.py --items 20000 --users 20000 --specs Flat HNSW32
    python benchmarks/export.py --items 1000000 --users 1000000 --users-sweep 100000 1000000

"Ours" is the export job of recsys/export/candidates.py minus the model forward (the user
vectors are given, as the synthetic catalogue makes them): per part of `--part-users` users,
`search_part` (per batch of `--search-users`: the search over-fetching past the seen items,
list by list for IVF,Flat, and dropping them) and the part's `table` (a second search for
users left short, the arrow table), made and written by the job's `PartWriter` while the next
part is searched (atomic parquet parts in a temp dir, deleted once timed so the disk stays
free). "Raw faiss" is `index.search(queries, k)` on the same index and the same user vectors
in batches of `--search-users` too (raw faiss is no faster in batches of 1,024 or 20,000).
Both run on every block of `--block-parts` parts, in alternating order, so a busy machine
slows both alike; users/s come from the summed times, ours including the wait for each block's
last write. Index building and making the synthetic users are not timed.

Each spec (and each `--users-sweep` size) runs in a fresh subprocess, so its peak RSS
(getrusage, taken before the recall check) is its own. Recall@k of a spec is raw search against
exact Flat search on `--recall-users` users. Ends with one JSON line: the top-level numbers are
those of the first approximate spec (Flat when there is none); `ratio_min` is over all specs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# benchmarks/ holds serving.py, which would hide the serving package that recsys imports: take
# the folder off the path and load synthetic.py from its file
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("synthetic", HERE / "synthetic.py")
synthetic = sys.modules["synthetic"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)
synthetic_catalogue = synthetic.synthetic_catalogue

from recsys.ann import index as ann  # noqa: E402
from recsys.config import ExportConfig  # noqa: E402
from recsys.export.candidate_search import build_catalogue, search_part  # noqa: E402
from recsys.export.candidates import PartWriter  # noqa: E402
from recsys.runtime.report import table  # noqa: E402

WHAT = ("ours = recsys.export.candidate_search.search_part + candidates.PartWriter (search with "
        "over-fetch, drop seen, parquet parts) on given user vectors: no model forward")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    """The resident set now (Linux), to show that memory stays flat part after part."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(args: argparse.Namespace, spec: str) -> dict:
    """One spec at one size, in this process: time ours and raw faiss part by part."""
    faiss.omp_set_num_threads(args.threads)
    cat = synthetic_catalogue(args.items, args.users, args.dim, args.seed)
    item_ids = pa.array(cat.item_ids(), pa.string())  # as the job does once per export
    cfg = ExportConfig(k=args.k, part_users=args.part_users, batch_users=args.batch_users,
                       search_users=args.search_users, index=spec, metric=args.metric,
                       nprobe=args.nprobe, ef_search=args.ef_search)
    started = time.perf_counter()
    catalogue = build_catalogue(cat.item_vectors, np.arange(1, args.items + 1), cfg)
    build_s = time.perf_counter() - started
    index = catalogue.index
    warm = cat.users(0, min(args.users, args.search_users))
    # sets nprobe / efSearch on the index (they stay set), so raw faiss searches alike; then
    # warms ours once too (thread pools, BLAS buffers, the allocator), neither timed
    ann.search(index, warm.vectors, args.k, nprobe=args.nprobe, ef_search=args.ef_search,
               metric=args.metric)
    search_part([(warm.vectors, warm.histories(), warm.ids)], catalogue, cfg).table(item_ids)
    bs, search_bs, k = args.batch_users, args.search_users, args.k
    seconds = {"ours": 0.0, "faiss": 0.0}
    rows = part_bytes = 0
    starts = range(0, args.users, args.part_users)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        for b, first in enumerate(range(0, len(starts), args.block_parts)):
            block = [(i, cat.users(s, min(s + args.part_users, args.users)))  # not timed
                     for i, s in enumerate(starts[first:first + args.block_parts], first)]
            seen = [users.histories() for _, users in block]  # the job has them, too
            normed = [users.vectors / np.linalg.norm(users.vectors, axis=1, keepdims=True)
                      if args.metric == "cosine" else users.vectors for _, users in block]
            paths = [Path(tmp) / f"part-{i:05d}.parquet" for i, _ in block]

            def ours(block=block, seen=seen, paths=paths):  # the job's loop: write behind
                with PartWriter("benchmark") as writer:
                    for (_, users), history, path in zip(block, seen, paths, strict=True):
                        batches = ((users.vectors[s:s + bs], history[s:s + bs], users.ids[s:s + bs])
                                   for s in range(0, len(users), bs))
                        searched = search_part(batches, catalogue, cfg)
                        writer.write(path, partial(searched.table, item_ids))  # as the job

            def raw(normed=normed):  # raw faiss gets what ann.search would pass it
                for queries in normed:
                    for s in range(0, len(queries), search_bs):
                        index.search(queries[s:s + search_bs], k)

            for name in ("ours", "faiss") if b % 2 == 0 else ("faiss", "ours"):
                t = time.perf_counter()
                ours() if name == "ours" else raw()
                seconds[name] += time.perf_counter() - t
            for path in paths:  # timed already: keep the disk free
                rows += pq.read_metadata(path).num_rows
                part_bytes += path.stat().st_size
                path.unlink()
            done = min(args.users, starts[block[-1][0]] + args.part_users)
            print(f"parts {block[0][0]}-{block[-1][0]}: {done}/{args.users} users, ours "
                  f"{seconds['ours']:.1f} s, faiss {seconds['faiss']:.1f} s, RSS {rss_mb():.0f} MB "
                  f"(peak {peak_rss_mb():.0f})", file=sys.stderr,
                  flush=True)
    peak = peak_rss_mb()  # before the recall check, which builds an exact index
    result = {
        "spec": spec, "items": args.items, "users": args.users, "dim": args.dim, "k": k,
        "users_per_s": round(args.users / max(seconds["ours"], 1e-9), 1),
        "faiss_users_per_s": round(args.users / max(seconds["faiss"], 1e-9), 1),
        "ratio": round(seconds["faiss"] / max(seconds["ours"], 1e-9), 3),
        "peak_rss_mb": round(peak, 1), "build_s": round(build_s, 2),
        "ours_s": round(seconds["ours"], 2), "faiss_s": round(seconds["faiss"], 2),
        "rows": rows, "part_mb": round(part_bytes / 2**20, 1),
        "index_mb": round(len(faiss.serialize_index(index)) / 2**20, 1),
    }
    n_recall = min(args.recall_users, args.users)
    if n_recall and spec == "Flat":
        result["recall@k_vs_exact"] = 1.0
    elif n_recall:
        sample = np.random.default_rng(args.seed).choice(args.users, n_recall, replace=False)
        queries = np.concatenate([cat.users(int(u), int(u) + 1).vectors for u in sample])
        _, found = ann.search(index, queries, k, metric=args.metric)
        _, exact = ann.exact_search(cat.item_vectors, queries, k, args.metric)
        result["recall@k_vs_exact"] = round(ann.recall_at_k(found, exact, k), 4)
    return result


def child(args: argparse.Namespace, spec: str, users: int, recall_users: int) -> dict:
    """`run_case` in a fresh interpreter, so that its peak RSS is its own."""
    argv = [sys.executable, __file__, "--child", "--specs", spec, "--users", str(users),
            "--recall-users", str(recall_users)]
    for flag in ("items", "dim", "k", "batch_users", "search_users", "part_users", "block_parts",
                 "threads", "metric", "seed", "nprobe", "ef_search"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {spec} with {users} users failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data",
                        help="unused: the catalogue is synthetic (kept for the common flags)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=300_000,
                        help="users exported (5 blocks of 3 parts: machine noise averages out)")
    parser.add_argument("--dim", type=int, default=64, help="64, 128 or 384 (any works)")
    parser.add_argument("--specs", nargs="+", default=["Flat", "IVF1024,Flat", "HNSW32"],
                        help="faiss index_factory specs")
    parser.add_argument("--k", type=int, default=100, help="candidates per user")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists searched")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    parser.add_argument("--batch-users", type=int, default=ExportConfig.batch_users,
                        help="users handed to the export at once (the job's forward batch)")
    parser.add_argument("--search-users", type=int, default=ExportConfig.search_users,
                        help="users a search worker takes at once; raw faiss's batch too")
    parser.add_argument("--part-users", type=int, default=ExportConfig.part_users)
    parser.add_argument("--block-parts", type=int, default=3,
                        help="parts timed together, ours then raw faiss (alternating order)")
    parser.add_argument("--metric", default="ip", choices=ann.METRICS)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="faiss OpenMP threads (default: all cores)")
    parser.add_argument("--recall-users", type=int, default=1000,
                        help="users whose raw search is compared with exact search")
    parser.add_argument("--users-sweep", type=int, nargs="*", default=[],
                        help="user counts to report peak RSS at (first approximate spec)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = run_case(args, args.specs[0])
        print(json.dumps(result))
        return result

    cases = [child(args, spec, args.users, args.recall_users) for spec in args.specs]
    approximate = [c for c in cases if c["spec"] != "Flat"]
    main_case = (approximate or cases)[0]
    sweep = [main_case if n == args.users else child(args, main_case["spec"], n, 0)
             for n in args.users_sweep]
    k = args.k
    print(table(("spec", "items", "users", "dim", "users/s ours", "users/s faiss", "ratio",
                 "peak RSS MB", f"recall@{k}", "index MB", "build s", "parts MB"),
                [(c["spec"], c["items"], c["users"], c["dim"], f"{c['users_per_s']:.0f}",
                  f"{c['faiss_users_per_s']:.0f}", f"{c['ratio']:.3f}", f"{c['peak_rss_mb']:.0f}",
                  c.get("recall@k_vs_exact"), f"{c['index_mb']:.1f}", f"{c['build_s']:.1f}",
                  f"{c['part_mb']:.1f}")
                 for c in cases]))
    if sweep:
        print(f"\npeak RSS as users grow ({main_case['spec']}, fresh process per size):")
        print(table(("users", "users/s ours", "users/s faiss", "ratio", "peak RSS MB"),
                    [(c["users"], f"{c['users_per_s']:.0f}", f"{c['faiss_users_per_s']:.0f}",
                      f"{c['ratio']:.3f}", f"{c['peak_rss_mb']:.0f}") for c in sweep]))
    print(f"{WHAT}; faiss threads {args.threads}, batch {args.batch_users} users, search "
          f"batch {args.search_users} users, part "
          f"{args.part_users} users, nprobe {args.nprobe}, efSearch {args.ef_search}, metric "
          f"{args.metric}; recall: raw search vs exact Flat on {args.recall_users} users")
    result = {
        "items": args.items, "users": args.users, "dim": args.dim, "k": k,
        "spec": main_case["spec"], "specs": " ".join(args.specs),
        "users_per_s": main_case["users_per_s"],
        "faiss_users_per_s": main_case["faiss_users_per_s"], "ratio": main_case["ratio"],
        "peak_rss_mb": main_case["peak_rss_mb"],
        f"recall@{k}_vs_exact": main_case.get("recall@k_vs_exact"),
        "ratio_min": min(c["ratio"] for c in cases),
        "batch_users": args.batch_users, "search_users": args.search_users,
        "part_users": args.part_users, "threads": args.threads,
        "nprobe": args.nprobe, "ef_search": args.ef_search, "metric": args.metric,
        "model_forward": False,
    }
    for c in cases:
        for key in ("users_per_s", "faiss_users_per_s", "ratio", "peak_rss_mb"):
            result[f"{key}:{c['spec']}"] = c[key]
        result[f"recall@{k}_vs_exact:{c['spec']}"] = c.get("recall@k_vs_exact")
        for key in ("part_mb", "index_mb", "build_s"):
            result[f"{key}:{c['spec']}"] = c[key]
    for c in sweep:
        result[f"peak_rss_mb:users={c['users']}"] = c["peak_rss_mb"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
