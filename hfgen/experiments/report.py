"""Writing an experiment's results: ``config.json`` (the exact configuration), ``results.json`` (every seed's
value and the mean +- spread per cell), ``results.md`` (the table and the discussion) beside the plot."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .metrics import mean_spread


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows``: ``{"cell": {...}, "metrics": {name: [value per seed] | None}, "note": str?}``. Adds
    ``"summary": {name: mean_spread(values) | None}`` (``None``: not applicable, see ``note``)."""
    out = []
    for row in rows:
        summary = {name: (None if values is None else mean_spread(values)) for name, values in row["metrics"].items()}
        out.append({**row, "summary": summary})
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or value == 0:
        return f"{value:.3f}"
    return f"{value:.2e}"


def markdown_table(rows: list[dict[str, Any]], metric_names: list[str] | None = None) -> str:
    """One line per cell: the cell's keys, then ``mean ± std`` of every metric (``n/a`` where not applicable)."""
    if not rows:
        return "(no rows)\n"
    cell_keys = list(rows[0]["cell"])
    metric_names = metric_names or list(rows[0]["summary"])
    has_note = any(row.get("note") for row in rows)
    header = cell_keys + metric_names + (["note"] if has_note else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["cell"][k]) for k in cell_keys]
        for name in metric_names:
            s = row["summary"].get(name)
            cells.append("n/a" if s is None else f"{_fmt(s['mean'])} ± {_fmt(s['std'])}")
        if has_note:
            cells.append(row.get("note", ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_environment(started: float | None = None) -> dict[str, Any]:
    """Where and how fast a run went: versions, torch threads, CPU count, ``wall_seconds`` since ``started``
    (a ``time.time()`` value; ``None`` if not given), the process's CPU seconds (user + system: the cost
    independent of how busy the machine was) and the 1/5/15-minute load average when it finished."""
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "wall_seconds": None if started is None else round(time.time() - started, 1),
            "process_cpu_seconds": round(time.process_time(), 1),
            "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "written_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def run_line(environment: dict[str, Any]) -> str:
    """One markdown sentence saying how long the run took, on how many threads, under what load."""
    wall = environment.get("wall_seconds")
    if wall is None:
        return ""
    load = environment.get("loadavg_at_end")
    load_text = f", load average {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min) at the end" if load else ""
    cpu = environment.get("process_cpu_seconds")
    cpu_text = f" ({cpu / 60:.1f} min of CPU time)" if cpu is not None else ""
    return (f"Run: {wall / 60:.1f} min wall{cpu_text} on {environment.get('threads')} torch thread(s) of a "
            f"{environment.get('cpu_count')}-core machine{load_text}; finished {environment.get('written_utc')} UTC.\n")


def write_results(out_dir: str | Path, title: str, config: dict[str, Any], rows: list[dict[str, Any]],
                  discussion: str = "", metric_names: list[str] | None = None, extra: dict | None = None,
                  plots: list[str] = (), started: float | None = None,
                  environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``config.json``, ``results.json`` and ``results.md`` into ``out_dir``; return the results dict.

    ``started``: the run's ``time.time()`` at its start (its wall time is recorded). ``environment``: a saved
    run's environment to keep unchanged (re-rendering from ``results.json`` without training)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Where the files went is not part of the experiment, and an absolute path names the machine that ran it.
    config = {key: value for key, value in config.items() if key != "output_dir"}
    rows = aggregate(rows)
    if environment is None:
        environment = run_environment(started)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    results = {"title": title, "config": config, "environment": environment, "rows": rows, **(extra or {})}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    seeds = config.get("seeds")
    md = [f"# {title}\n", f"Seeds per cell: {seeds} (mean ± sample standard deviation over seeds). "
          f"Exact configuration: `config.json`; every seed's value: `results.json`.\n"]
    md += [line for line in (run_line(environment),) if line]
    md.append(markdown_table(rows, metric_names))
    md += [f"\n![{p}]({p})\n" for p in plots]
    if discussion:
        md.append("\n## Discussion\n\n" + discussion.strip() + "\n")
    (out / "results.md").write_text("\n".join(md))
    return results


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.8):
    """A matplotlib ``Figure`` with ``ncols`` axes on an Agg canvas (no pyplot: the caller's backend is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return figure, axes
