"""`recsys` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from recsys.runtime.signals import exit_on_sigterm

    exit_on_sigterm()  # a stopped run unwinds and is marked KILLED, not left RUNNING
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except (ValueError, OSError, KeyError, FloatingPointError) as err:  # a diverged run too
        print(f"recsys {args.command}: error: {err}", file=sys.stderr)
        return 2


def _prepare(args) -> None:
    from recsys.config import read_yaml
    from recsys.data import prepare

    mapping = read_yaml(args.mapping, "mapping file") if args.mapping else None
    info = prepare(args.source, args.path, args.out, mapping)
    print(json.dumps(info, indent=2, default=str))


def _train(args) -> None:
    from recsys import load_config

    if args.resume and args.set:
        raise ValueError("--set does not apply to --resume: a resumed run keeps the config in "
                         "its run dir (start a new run to change settings)")
    config = None if args.resume else load_config(args.config, args.set)  # before torch loads
    from recsys import fit
    from recsys.runtime.report import table

    result = fit(config, resume=args.resume)
    test = result.metrics["test"]
    print(table(("test metric", "value"), [(k, v) for k, v in test.items()]))
    print(f"run dir: {result.run_dir}")


def _evaluate(args) -> None:
    from recsys.recipes import evaluate_run
    from recsys.runtime.report import table

    metrics = evaluate_run(args.run, args.split)
    print(table((f"{args.split} metric", "value"), list(metrics.items())))


def _export(args) -> None:
    from recsys.export.embeddings import export_embeddings
    from recsys.runtime.report import table

    if args.what == "candidates":
        from recsys.export.candidates import export_candidates, read_id_list

        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing lines
        users = read_id_list(args.users) if args.users else None
        if args.rerank:
            from recsys.export.reranked import export_reranked

            summary = export_reranked(args.run, args.rerank, args.out, n=args.k, users=users,
                                      overrides=args.set)
        else:
            summary = export_candidates(args.run, args.out, k=args.k, users=users,
                                        overrides=args.set)
        print(table(("candidates", "value"), list(summary.items())))
        return
    summary = export_embeddings(args.run, args.out)
    rows = [(name, summary[name], summary["dim"], summary[f"{name}_path"])
            for name in ("items", "users")]
    print(table(("store", "vectors", "dim", "version dir"), rows))


def _index(args) -> None:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing lines
    from recsys.ann import index as ann
    from recsys.config import TrackingConfig
    from recsys.runtime import tracking
    from recsys.runtime.report import table
    from serving.store import read_store

    if not (args.report or args.save):
        raise ValueError("nothing to do: give --report, --save or both")
    store = read_store(args.store)
    specs = args.spec or ["Flat"]
    if args.save:
        index = ann.build_index(store.vectors, specs[0], args.metric)
        print(f"saved {specs[0]} index of {index.ntotal} vectors: "
              f"{ann.save_index(index, store.path)}")
    if args.report:
        queries = ann.sample_rows(store.vectors, args.queries, seed=0)
        rows = ann.index_report(store.vectors, queries, specs, metric=args.metric,
                                nprobe=args.nprobe, ef_search=args.ef_search)
        print(table(list(rows[0]), [list(row.values()) for row in rows]))
        with tracking.start_run(TrackingConfig(experiment="index-report"), name="index-report"):
            tracking.log_params({"store": store.path, "metric": args.metric, "nprobe": args.nprobe,
                                 "ef_search": args.ef_search, "queries": len(queries),
                                 "specs": dict(enumerate(specs))})
            for step, row in enumerate(rows):  # step i = specs.i
                tracking.log_metrics({k: v for k, v in row.items() if k != "spec"}, step=step)


def _serve(args) -> None:
    from serving.app import serve

    serve(args.store, host=args.host, port=args.port, candidates_dir=args.candidates,
          refresh_seconds=args.refresh_seconds)


def _pipeline(args) -> None:
    from recsys import load_config
    from recsys.pipeline import run_pipeline, summary

    config = load_config(args.config, args.set)
    rerank = load_config(args.rerank) if args.rerank else None
    print(summary(config, run_pipeline(config, rerank)))


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert raw files into a canonical dataset dir")
    p.add_argument("--source", required=True, help="converter, e.g. movielens-100k")
    p.add_argument("path", help="folder with the raw files")
    p.add_argument("--out", required=True, help="dataset dir to write")
    p.add_argument("--mapping", help="YAML column mapping (source 'tabular')")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train a model from an experiment config")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", help="experiment YAML")
    group.add_argument("--resume", help="run dir of a killed run to continue")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.lr=3e-4 (repeatable)")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="export a run's artifacts for serving")
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument("--what", required=True, choices=("embeddings", "candidates"),
                   help="embeddings: item and user vector stores; candidates: top-K items per "
                        "user as parquet parts + _manifest.json (resumable; runs under torchrun)")
    p.add_argument("--out", help="output dir (default: RUN_DIR/embeddings or RUN_DIR/candidates)")
    p.add_argument("--k", type=int, help="candidates: items per user (default: export.k)")
    p.add_argument("--users", metavar="FILE",
                   help="candidates: raw user ids, one a line (default: every user)")
    p.add_argument("--set", action="append", default=[], metavar="export.KEY=VALUE",
                   help="candidates: override an export setting, e.g. export.part_users=50000")
    p.add_argument("--rerank", metavar="RUN_DIR",
                   help="candidates: rerank the top K of --run (a retriever) with this listwise "
                        "reranker run and keep --k (see recsys/export/reranked.py)")
    p.set_defaults(func=_export)

    p = sub.add_parser("index", help="build, save and measure ANN indexes over an embedding store")
    p.add_argument("--store", required=True, help="embedding store root or version dir")
    p.add_argument("--spec", action="append", metavar="FACTORY",
                   help="faiss index_factory spec, e.g. Flat, IVF256,Flat, HNSW32 (repeatable; "
                        "default Flat; --save builds the first)")
    p.add_argument("--metric", default="ip", choices=("ip", "cosine"))
    p.add_argument("--nprobe", type=int, help="IVF lists searched per query")
    p.add_argument("--ef-search", type=int, help="HNSW search breadth")
    p.add_argument("--queries", type=int, default=1000,
                   help="report: a seeded sample of this many store vectors as queries")
    p.add_argument("--report", action="store_true",
                   help="print recall@{10,100} vs exact, queries/s and MB per spec; log to MLflow")
    p.add_argument("--save", action="store_true", help="write index.faiss into the version dir")
    p.set_defaults(func=_index)

    p = sub.add_parser("serve", help="serve an embedding store (and candidates) over HTTP")
    p.add_argument("--store", required=True, help="embedding store root (follows CURRENT) or "
                                                  "one version dir")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1-65535")
    p.add_argument("--candidates", metavar="DIR", help="exported candidates dir for "
                                                       "GET /candidates/{user_id}")
    p.add_argument("--refresh-seconds", type=float, metavar="N",
                   help="move to a new CURRENT version every N seconds (SIGHUP always does)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("pipeline", help="prepare, train, evaluate, index, export candidates "
                                         "[, train a reranker and rerank them]; reruns reuse "
                                         "finished stages whose inputs did not change")
    p.add_argument("--config", required=True, help="experiment YAML (the retriever)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override in the retriever config")
    p.add_argument("--rerank", metavar="CONFIG",
                   help="listwise reranker YAML; its retrieval_run is the pipeline's retriever")
    p.set_defaults(func=_pipeline)
    return parser


if __name__ == "__main__":
    sys.exit(main())
