"""``training.html``: the curves of one training run from its log, the loss terms and the validation
metrics per epoch (Tasks 1 and 3, rewritten after every epoch, so it can be watched during a run) or
per logging step (Task 2's Trainer log, written at the end), and the last logged values as a table.

Whether a run learns, over-fits or diverges shows in these curves long before the final numbers; the
CSV log holds the same values for other tools.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from qwen_forensics.files import atomic_write_text
from qwen_forensics.report.page import html_page, html_table, img, note
from qwen_forensics.report.plots import figure_data_uri

TRAINING_HTML = "training.html"
TRAINING_HEADINGS = ("Run", "Loss", "Validation metrics", "Last logged values")
# The leak guard's counts share the val_ prefix in the log (evaluation.leak_guard): counts, not metrics to plot.
LEAK_COLUMNS = ("val_leak_check", "val_overlap_records", "val_overlap_groups", "val_groups")


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def read_log_rows(train_log: str | os.PathLike, run_id: str | None = None) -> list[dict[str, Any]]:
    """The rows of a training CSV log (of ``run_id`` only, when given: a log gathers every run's rows)."""
    path = Path(train_log)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if run_id is None or row.get("run_id") == run_id]


def _curves(rows: Sequence[Mapping[str, Any]], x_key: str, columns: Sequence[str], title: str, ylabel: str) -> str:
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    for column in columns:
        points = [(_number(r.get(x_key)), _number(r.get(column))) for r in rows]
        points = [(x, y) for x, y in points if not (math.isnan(x) or math.isnan(y))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 40 else None, markersize=3, label=column)
    ax.set(title=title, xlabel=x_key, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_data_uri(fig)


def _has_values(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    return any(not math.isnan(_number(r.get(column))) for r in rows)


def write_training_report(out_path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, title: str,
                          description: Mapping[str, Any], x_key: str = "epoch") -> Path:
    """Write the page for ``rows`` (one dict per epoch or logging step; numbers or their text) to
    ``out_path``: loss columns (``loss``, ``loss_*``, ``eval_loss``, the Trainer's closing ``train_loss``)
    in one chart, validation metrics (``val_*``) in another; columns without a single value are left out."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    losses = [c for c in columns if (c in ("loss", "eval_loss", "train_loss") or c.startswith("loss_"))
              and _has_values(rows, c)]
    metrics = [c for c in columns if c.startswith("val_") and c not in LEAK_COLUMNS and _has_values(rows, c)]
    run = pd.DataFrame({"": list(description), "value": [str(v) for v in description.values()]})
    body = [f"<h2>{TRAINING_HEADINGS[0]}</h2>", html_table(run, text_columns=["", "value"])]
    body.append(f"<h2>{TRAINING_HEADINGS[1]}</h2>")
    body.append(img(_curves(rows, x_key, losses, "training loss", "loss"), "loss curves") if losses and rows
                else note("no loss logged yet"))
    body.append(f"<h2>{TRAINING_HEADINGS[2]}</h2>")
    body.append(img(_curves(rows, x_key, metrics, "validation", "metric"), "validation curves") if metrics
                else note("no validation set in this run (set ann_val to see validation metrics per epoch)"))
    body.append(f"<h2>{TRAINING_HEADINGS[3]}</h2>")
    if rows:
        # Per column its last logged value: the Trainer logs losses and its closing summary in different rows.
        shown = [x_key, *losses, *metrics]
        last = [next((_number(r[c]) for r in reversed(rows) if not math.isnan(_number(r.get(c)))), math.nan)
                for c in shown]
        body.append(html_table(pd.DataFrame({"column": shown, "value": last}), text_columns=["column"]))
    else:
        body.append(note("nothing logged yet"))
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, html_page(title, "\n".join(body)))
    return path
