"""CTR peers side by side: our DCN-v2 reranker vs LightGBM vs logistic regression, one split.

    python benchmarks/ctr.py --dataset ml-100k --config configs/ml100k_ctr.yaml

All three read the same features (`recsys.inputs.reranker`: user/item IDs and attributes, the item's
frozen text vector, the mean text vector of the user's items before the row, history stats) on
the same temporal split (`data.ctr`). Each picks its settings on the validation split only:
ours its epoch (`fit`, valid AUC), LightGBM its number of trees (early stopping on valid AUC)
and leaves from a small grid, logistic regression its L2 strength from a small grid. All three
are logged to one MLflow experiment (`ctr-<dataset>`). Then (`benchmarks/rerank.py`) the retrieval
config is trained (or `--retrieval-run` reused) and the listwise reranker reorders its top K:
test NDCG@10 of retrieval alone vs retrieval + rerank, and the rerank latency per 1,000 users
(`--skip-rerank` leaves those keys null). Prints tables and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from recsys import load_config
from recsys.config import Config, config_to_dict
from recsys.data.ctr import CtrSplit
from recsys.eval.ctr import ctr_metrics
from recsys.inputs.reranker import FlatFeatures, build_reranker_inputs, flat_features
from recsys.recipes import load_data
from recsys.runtime import tracking
from recsys.runtime.report import table
from recsys.train.loop import fit

LIGHTGBM_GRID = ({"num_leaves": 15, "min_data_in_leaf": 50}, {"num_leaves": 63,
                                                               "min_data_in_leaf": 100})
LOGREG_C = (0.01, 0.1, 1.0)  # inverse L2 strength, chosen on valid AUC
SEED = 42
_spec = importlib.util.spec_from_file_location("rerank", Path(__file__).parent / "rerank.py")
rerank = sys.modules["rerank"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rerank)


def lightgbm_model(train: FlatFeatures, valid: FlatFeatures, yt, yv, threads: int):
    """The LightGBM model with the best valid AUC over `LIGHTGBM_GRID` (trees: early stopping)."""
    import lightgbm as lgb

    best = None
    for grid in LIGHTGBM_GRID:
        params = {"objective": "binary", "metric": "auc", "learning_rate": 0.05,
                  "feature_fraction": 0.5, "bagging_fraction": 0.8, "bagging_freq": 1,
                  "lambda_l2": 1.0, "seed": SEED, "deterministic": True, "verbose": -1,
                  "num_threads": threads, "max_cat_to_onehot": 8, "cat_smooth": 20, **grid}
        data = lgb.Dataset(train.matrix, yt, feature_name=train.names,
                           categorical_feature=train.categorical, free_raw_data=False)
        check = lgb.Dataset(valid.matrix, yv, reference=data)
        booster = lgb.train(params, data, num_boost_round=2000, valid_sets=[check],
                            callbacks=[lgb.early_stopping(50, verbose=False)])
        score = booster.best_score["valid_0"]["auc"]
        logging.info("lightgbm %s: valid auc %.4f at %d trees", grid, score, booster.best_iteration)
        if best is None or score > best[0]:
            best = (score, booster, {**grid, "trees": booster.best_iteration})
    _, booster, params = best
    return (lambda f: booster.predict(f.matrix, num_iteration=booster.best_iteration)), params


def logreg_model(train: FlatFeatures, valid: FlatFeatures, yt, yv):
    """L2 logistic regression on one-hot categoricals + standardised dense columns."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cats = train.categorical
    dense = np.setdiff1d(np.arange(train.matrix.shape[1]), cats)
    onehot = OneHotEncoder(handle_unknown="ignore").fit(_codes(train.matrix[:, cats]))
    scaler = StandardScaler().fit(train.matrix[:, dense])

    def design(f: FlatFeatures):
        return sparse.hstack([onehot.transform(_codes(f.matrix[:, cats])),
                              sparse.csr_matrix(scaler.transform(f.matrix[:, dense]))]).tocsr()

    xt, xv = design(train), design(valid)
    best = None
    for c in LOGREG_C:
        model = LogisticRegression(C=c, max_iter=2000).fit(xt, yt)
        score = roc_auc_score(yv, model.predict_proba(xv)[:, 1])
        logging.info("logreg C=%s: valid auc %.4f", c, score)
        if best is None or score > best[0]:
            best = (score, model, {"C": c})
    _, model, params = best
    return (lambda f: model.predict_proba(design(f))[:, 1]), params


def _codes(columns: np.ndarray) -> np.ndarray:
    """Category codes (n, k) with NaN (unknown ID / no value) as -1, its own one-hot column."""
    return np.where(np.isnan(columns), -1, columns).astype(np.int64)


def run_baseline(name: str, config: Config, split: CtrSplit, feats: dict[str, FlatFeatures],
                 threads: int) -> dict:
    """Train one baseline, log it to the config's MLflow experiment, return its metrics."""
    started = time.perf_counter()
    yt, yv = split.train.labels, split.valid.labels
    if name == "lightgbm":
        predict, params = lightgbm_model(feats["train"], feats["valid"], yt, yv, threads)
    else:
        predict, params = logreg_model(feats["train"], feats["valid"], yt, yv)
    seconds = time.perf_counter() - started
    out = {"params": params, "seconds": seconds}
    for which in ("valid", "test"):
        part = split.part(which)
        out[which] = ctr_metrics(part.labels, np.asarray(predict(feats[which]), np.float64),
                                 part.users, part.impressions)
    with tracking.start_run(config.tracking, name=name):
        tracking.log_params({"model": name, **params, "features": len(feats["train"].names),
                             "data": config_to_dict(config)["data"]})
        tracking.log_metrics(out["valid"], prefix="valid_")
        tracking.log_metrics(out["test"], prefix="test_")
        tracking.log_metrics({"train_seconds": seconds})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="folder name under --data-root")
    parser.add_argument("--config", default="configs/ml100k_ctr.yaml", help="reranker YAML")
    parser.add_argument("--data-root", default="../shared/data", help="where datasets live")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for our model, e.g. train.epochs=5")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    parser.add_argument("--skip-rerank", action="store_true", help="CTR peers only")
    rerank.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # an import may have configured the root logger already
    overrides = [f"data.raw={Path(args.data_root) / args.dataset}",
                 f"data.dir=data/prepared/{args.dataset}",
                 f"tracking.experiment=ctr-{args.dataset}", *args.set]
    config = load_config(args.config, overrides)

    ours = fit(config).metrics
    dataset, split = load_data(config)
    inputs = build_reranker_inputs(config.model.reranker, dataset.items, dataset.users, split)
    feats = {w: flat_features(config.model.reranker, inputs, split.part(w))
             for w in ("train", "valid", "test")}
    results = {"reranker (ours, DCN-v2)": {**ours, "seconds": ours["train_seconds"],
                                           "params": {"best_epoch": ours["best_epoch"]}}}
    results["lightgbm"] = run_baseline("lightgbm", config, split, feats, args.threads)
    results["logistic regression"] = run_baseline("logreg", config, split, feats, args.threads)

    rows = [(name, r["valid"]["auc"], r["test"]["auc"], r["test"]["gauc"], r["test"]["logloss"],
             r["test"]["calibration_ece"], f"{r['seconds']:.0f}", json.dumps(r["params"]))
            for name, r in results.items()]
    print(f"\nCTR on {args.dataset}: {len(split.train)} train / {len(split.valid)} valid / "
          f"{len(split.test)} test rows, {len(feats['train'].names)} features, "
          f"test positive rate {split.test.labels.mean():.3f}")
    print(table(("model", "valid AUC", "test AUC", "test GAUC", "test logloss", "test ECE",
                 "train s", "chosen on valid"), rows))
    test, lgbm, logreg = (results[k]["test"] for k in results)
    summary = {"auc": round(test["auc"], 5), "gauc": round(test["gauc"], 5),
               "logloss": round(test["logloss"], 5),
               "lightgbm_auc": round(lgbm["auc"], 5), "lightgbm_gauc": round(lgbm["gauc"], 5),
               "lightgbm_logloss": round(lgbm["logloss"], 5),
               "logreg_auc": round(logreg["auc"], 5), "logreg_gauc": round(logreg["gauc"], 5),
               "logreg_logloss": round(logreg["logloss"], 5),
               "auc_ratio_vs_lightgbm": round(test["auc"] / lgbm["auc"], 5),
               "retrieval_ndcg@10": None, "rerank_ndcg@10": None, "rerank_ndcg@10_gain": None,
               "rerank_ms_per_1k_users": None}
    if not args.skip_rerank:
        summary.update(rerank.compare(args))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
