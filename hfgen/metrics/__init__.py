"""Metric modules that ship with hfgen, for ``evaluate`` (Hub metrics cannot be downloaded offline).

``evaluate.load`` takes a local folder ``m/`` holding ``m/m.py`` that defines an ``evaluate.Metric``; each folder
here is one such module. :func:`load_metric` is ``evaluate.load`` on the shipped path.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRICS = tuple(sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()))


def metric_path(name: str = "classification_report") -> str:
    """The folder of the shipped metric ``name`` (what ``evaluate.load`` takes)."""
    if name not in METRICS:
        raise ValueError(f"Unknown hfgen metric {name!r}; valid choices: {', '.join(METRICS)}.")
    return str(METRICS_DIR / name)


def load_metric(name: str = "classification_report", **kwargs):
    """``evaluate.load(metric_path(name), **kwargs)``: an ``evaluate.EvaluationModule``, with no download."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS", "METRICS_DIR", "load_metric", "metric_path"]
