"""Evaluation: full-ranking retrieval metrics, CTR metrics and calibration, rerank-over-retrieval
metrics. May use `inputs`, `models`, `data`, `ranking`, `metrics`, `runtime`, never `tasks`."""
