"""Serving latency and throughput: EmbeddingStore lookups against numpy, and the HTTP app.

    python benchmarks/serving.py                          # 100k x 64 synthetic store, 5 s a level
    python benchmarks/serving.py --seconds 2 --connections 1 8
    python benchmarks/serving.py --store runs/<run_id>/embeddings/items

In process: `store.get` of 1 and of 100 random ids against plain numpy fancy indexing
`matrix[rows]` of the same matrix (the store's memory map as an ndarray) with the rows already
known, each on its own random draw, timed call by call in alternation so a busy machine slows
both alike; then `store.nearest(vector, k)` by exact search and through a faiss Flat index.
HTTP: the app (`serving.app.serve`, access log off) runs in a subprocess on a loopback port; a
load generator in this process keeps C requests in flight, C = 1, 8, 64, each POST /embeddings
of one random id, for `--seconds` after a short warm-up; a failed or non-200 request is an error.
The default client writes HTTP/1.1 on asyncio keep-alive connections; `--client httpx` uses
httpx.AsyncClient instead, which costs ~1 ms of CPU a request itself and queues badly at 64
connections, so it measures mostly itself. Either client is Python on the same machine as the
server: on a small, busy box the HTTP numbers are a floor, not the server's ceiling.
Ends with one JSON line (latencies: `_us` microseconds, `_ms` milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This script is named serving.py: take its folder off the path so `serving` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from recsys.runtime.report import table  # noqa: E402
from serving import EmbeddingStore  # noqa: E402
from serving.store import write_store  # noqa: E402


def pct(samples, q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def synthetic_store(root: Path, items: int, dim: int, seed: int) -> Path:
    vectors = np.random.default_rng(seed).normal(size=(items, dim)).astype(np.float32)
    return write_store(root, [f"item{i}" for i in range(items)], vectors, model="synthetic",
                           run_id="bench", normalized=False, version="v1")


def time_lookups(store: EmbeddingStore, n_ids: int, calls: int, seed: int) -> dict:
    """Per-call ns of store.get(ids) and of matrix[rows], each on its own uniform random draw
    (the cold-cache case: no popular ids, neither finds the other's rows in cache), the two
    in alternating order."""
    snap = store.snapshot()
    ids = snap.data.ids.tolist()
    matrix = snap.matrix  # (count, dim) ndarray view of the memory map
    rng = np.random.default_rng(seed)
    ours, numpy = [], []
    for call in range(calls):
        batch = [ids[i] for i in rng.integers(0, len(ids), n_ids)]
        rows = rng.integers(0, len(ids), n_ids).astype(np.intp)  # other rows: none is cached
        first = call % 2
        for turn in (first, 1 - first):
            t0 = time.perf_counter_ns()
            store.get(batch) if turn == 0 else matrix[rows]
            (ours if turn == 0 else numpy).append(time.perf_counter_ns() - t0)
    return {"ours": ours, "numpy": numpy}


def time_nearest(store: EmbeddingStore, k: int, calls: int, seed: int) -> list[int]:
    queries = np.random.default_rng(seed).normal(size=(calls, store.meta["dim"]))
    out = []
    for q in queries.astype(np.float32):
        t0 = time.perf_counter_ns()
        store.nearest(q, k)
        out.append(time.perf_counter_ns() - t0)
    return out


def nearest_cases(store: EmbeddingStore, path: Path, synthetic: bool):
    """(label, store) to time nearest on: as the store is; a synthetic store also with a faiss
    Flat index in its version dir, as `recsys index --save` leaves it (a given store is never
    written to)."""
    yield store.meta["search"], store
    if synthetic and store.meta["search"] == "exact":
        import faiss

        faiss.omp_set_num_threads(1)  # as `serve` runs it: one thread a query
        index = faiss.IndexFlatIP(store.meta["dim"])
        index.add(np.asarray(store.snapshot().matrix, dtype=np.float32))
        faiss.write_index(index, str(store.snapshot().data.path / "index.faiss"))
        yield "faiss_flat", EmbeddingStore(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    code = ("from serving.app import serve; import sys; "
            "serve(sys.argv[1], port=int(sys.argv[2]), access_log=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a client whose own cost per
    request is small next to the server's, unlike httpx's."""

    def __init__(self, port: int):
        self.port, self.streams = port, None

    async def post(self, path: str, body: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def load(port: int, ids: list[str], connections: int, seconds: float, warmup: float,
               seed: int, client: str) -> dict:
    """C workers, one request in flight each, for warmup + seconds; only the latter counts."""
    latencies, errors = [], [0]
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    shared = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def worker(n: int):
        rng, conn = np.random.default_rng(seed + n), RawConnection(port)
        while (now := time.perf_counter()) < stop_at:
            body = json.dumps({"ids": [ids[int(rng.integers(len(ids)))]]}).encode()
            try:
                if client == "raw":
                    ok = await conn.post("/embeddings", body) == 200
                else:
                    ok = (await shared.post("/embeddings", content=body, headers={
                        "content-type": "application/json"})).status_code == 200
            except (OSError, asyncio.IncompleteReadError, httpx.HTTPError, ValueError):
                ok, conn = False, RawConnection(port)
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)
                errors[0] += not ok
        await conn.close()

    async with shared:
        await asyncio.gather(*(worker(n) for n in range(connections)))
    return {"requests": len(latencies), "rps": len(latencies) / seconds,
            "p50_ms": 1e3 * pct(latencies, 50), "p99_ms": 1e3 * pct(latencies, 99),
            "p999_ms": 1e3 * pct(latencies, 99.9), "errors": errors[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data",
                        help="unused: the store is synthetic or --store (kept for common flags)")
    parser.add_argument("--store", help="an existing store (default: a synthetic one)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calls", type=int, default=5000, help="in-process calls per case")
    parser.add_argument("--nearest-calls", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="HTTP: measured per level")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 8, 64],
                        help="HTTP concurrency levels; none: skip the HTTP part")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="HTTP load generator: raw asyncio keep-alive connections, or "
                             "httpx.AsyncClient (whose own CPU cost dominates on a small box)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        path = Path(args.store) if args.store else synthetic_store(Path(tmp) / "store",
                                                                  args.items, args.dim, args.seed)
        store = EmbeddingStore(path, unknown="zeros")
        count, dim = len(store), store.meta["dim"]
        result: dict = {"items": count, "dim": dim, "dtype": store.meta["dtype"]}
        rows = []
        for n in (1, 100):
            time_lookups(store, n, 200, args.seed)  # warm caches and pages
            t = time_lookups(store, n, args.calls, args.seed + n)
            ours = {q: pct(t["ours"], q) / 1e3 for q in (50, 99)}
            raw = {q: pct(t["numpy"], q) / 1e3 for q in (50, 99)}
            rows.append((f"get {n} id(s)", ours[50], ours[99], raw[50], raw[99],
                         ours[50] / raw[50]))
            result.update({f"lookup{n}_p50_us": ours[50], f"lookup{n}_p99_us": ours[99],
                           f"numpy{n}_p50_us": raw[50],
                           f"lookup{n}_p50_ratio_vs_numpy": ours[50] / raw[50]})
        for label, searched in nearest_cases(store, path, synthetic=not args.store):
            t = time_nearest(searched, args.k, args.nearest_calls, args.seed)
            rows.append((f"nearest k={args.k}, {label}", pct(t, 50) / 1e3, pct(t, 99) / 1e3,
                         "", "", ""))
            result.update({f"nearest_{label}_p50_us": pct(t, 50) / 1e3,
                           f"nearest_{label}_p99_us": pct(t, 99) / 1e3})
        print(f"in process, {count} x {dim} {store.meta['dtype']}, {args.calls} calls a case")
        print(table(("case", "p50 us", "p99 us", "numpy p50 us", "numpy p99 us", "p50 ratio"),
                    rows))

        if not args.connections:
            print(json.dumps(result))
            return result
        port = free_port()
        server = start_server(path, port)
        try:
            http_rows, errors = [], 0
            for c in args.connections:
                ids = store.snapshot().data.ids.tolist()
                r = asyncio.run(load(port, ids, c, args.seconds, args.warmup, args.seed,
                                     args.client))
                http_rows.append((c, r["requests"], r["rps"], r["p50_ms"], r["p99_ms"],
                                  r["p999_ms"], r["errors"]))
                errors += r["errors"]
                result.update({f"http_rps@{c}": r["rps"], f"http_p50_ms@{c}": r["p50_ms"],
                               f"http_p99_ms@{c}": r["p99_ms"],
                               f"http_p999_ms@{c}": r["p999_ms"]})
        finally:
            server.terminate()
            server.wait(timeout=30)
        result.update(http_errors=errors, http_client=args.client)
        print(f"\nHTTP POST /embeddings (1 id), {args.seconds:g} s a level, {args.client} client")
        print(table(("connections", "requests", "req/s", "p50 ms", "p99 ms", "p999 ms", "errors"),
                    http_rows))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
