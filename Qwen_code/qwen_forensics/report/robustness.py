"""The robustness section of ``report.html`` and of ``compare_runs.py --robustness``: one small plot per
metric with a line per perturbation over its levels (the clean value a dashed reference line), and the
table of ``robustness.csv``.

Rows are ``robustness.csv``'s (``evaluation.robustness``): ``set``, ``perturbation`` (``none`` for the
clean pass), ``level``, then the metric columns. The levels of different perturbations have different
units (JPEG quality, kernel size, variance, factor), so each line is drawn over its levels' order (the
first given is step 1, the clean pass step 0) and every point is labelled with its level.
"""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from qwen_forensics.report.page import html_table, img, note
from qwen_forensics.report.plots import figure_data_uri

CLEAN = "none"
# The metrics plotted, when present: the issue's AUROC, pixel F1, pixel IoU and score, with Task 3's
# LM and head variants of the image metrics.
PLOTTED = ("auroc", "lm_auroc", "head_auroc", "pixel_f1", "pixel_iou", "score", "head_score")
LEADING = ("set", "perturbation", "level")
TABLE_COLUMNS = (*LEADING, *PLOTTED, "seconds", "images_per_s")
LINE_STYLES = ("-", "--", ":", "-.")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plotted_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The :data:`PLOTTED` metrics that have a finite value in some row."""
    return [m for m in PLOTTED if any(_number(r.get(m)) is not None for r in rows)]


def robustness_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> str:
    """One metric's plot: for each run (its label -> its rows of one set) a line per perturbation from the
    clean value (step 0) over its levels, and the clean value as a dashed horizontal line; a data URI."""
    fig = Figure(figsize=(4.6, 3.2))
    ax = fig.subplots()
    colors = {}
    for r_index, (label, rows) in enumerate(runs.items()):
        style = LINE_STYLES[r_index % len(LINE_STYLES)]
        clean = next((_number(r.get(metric)) for r in rows if r["perturbation"] == CLEAN), None)
        if clean is not None:
            ax.axhline(clean, color="grey", linestyle="--", linewidth=1,
                       label=f"{label + ' ' if len(runs) > 1 else ''}clean {clean:.3f}")
        kinds = list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] != CLEAN))
        for kind in kinds:
            points = [(str(r["level"]), _number(r.get(metric))) for r in rows if r["perturbation"] == kind]
            xs = [0] if clean is not None else []
            ys = [clean] if clean is not None else []
            for step, (_, value) in enumerate(points, start=1):
                xs.append(step)
                ys.append(value if value is not None else math.nan)
            name = f"{label} {kind}" if len(runs) > 1 else kind
            line = ax.plot(xs, ys, style, marker="o", markersize=3, color=colors.get(kind), label=name)[0]
            colors.setdefault(kind, line.get_color())
            for step, (level, value) in enumerate(points, start=1):
                if value is not None:
                    ax.annotate(level, (step, value), fontsize=6, textcoords="offset points", xytext=(0, 3),
                                ha="center")
    ax.set_title(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (0: clean; then the levels in the order given)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    return figure_data_uri(fig)


def robustness_section(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The section's HTML: per set, one plot per metric (lines per run and perturbation) and the table."""
    all_rows = [r for rows in runs.values() for r in rows]
    if not all_rows:
        return note("no robustness rows")
    parts = [note("Each condition is one more pass over the set with the model loaded once; levels as in "
                  "IMDLBenCo's robustness protocol (jpeg: quality, blur: Gaussian kernel size, noise: variance in "
                  "0-255 units) plus resize by a factor (scored at the resized size). The dashed grey line is the "
                  "clean value.")]
    sets = list(dict.fromkeys(str(r["set"]) for r in all_rows))
    for name in sets:
        per_run = {label: [r for r in rows if str(r["set"]) == name] for label, rows in runs.items()}
        if len(sets) > 1:
            parts.append(f"<h3>{html.escape(name)}</h3>")
        metrics = plotted_metrics([r for rows in per_run.values() for r in rows])
        parts.append("".join(f"<figure>{img(robustness_figure(per_run, m), f'robustness {m}')}</figure>"
                             for m in metrics) or note("no plotted metric has a value"))
    for label, rows in runs.items():
        columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
        frame = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns, dtype=object)
        parts.append(html_table(frame, caption=label if len(runs) > 1 else None, text_columns=LEADING))
    return "\n".join(parts)
