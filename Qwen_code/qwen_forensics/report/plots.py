"""Charts and pictures for the HTML reports, each returned as a ``data:image/png;base64`` URI.

Figures are built with matplotlib's object API on an explicit Agg canvas (``FigureCanvasAgg``),
never through ``pyplot``: no window backend is ever chosen, no global figure state is kept, and
importing this module does not change the backend of a caller that uses pyplot itself.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from qwen_forensics.report.pictures import heat_scale_strip, heatmap_panel, rgb_array


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_data_uri(fig: Figure, dpi: int = 100) -> str:
    """Render ``fig`` to PNG on an Agg canvas attached here (a bare ``Figure`` has no drawing backend)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return png_data_uri(buf.getvalue())


def image_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


def roc_pr_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """ROC (left) and precision-recall (right) curves, one line per ``(name, y_true, p_fake)``.

    Each input needs both classes (the caller reports single-class runs in words instead).
    """
    fig = Figure(figsize=(10, 4.2))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for name, y, p in curves:
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, p):.3f})")
        precision, recall, _ = precision_recall_curve(y, p)
        pr_ax.step(recall, precision, where="post", label=f"{name} (AP {average_precision_score(y, p):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
    positive_ratio = float(np.mean(curves[0][1])) if curves else 0.5
    pr_ax.axhline(positive_ratio, color="0.6", linestyle="--", linewidth=1)
    for ax, title, xlabel, ylabel in ((roc_ax, "ROC", "false positive rate", "true positive rate"),
                                      (pr_ax, "Precision-recall (fake positive)", "recall", "precision")):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    return figure_data_uri(fig)


def bar_chart(metric: str, labels: Sequence[str], values: Sequence[float]) -> str:
    """One bar per run; a missing (NaN) value gets no bar and a "—" mark, so gaps stay visible."""
    fig = Figure(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.2))
    ax = fig.subplots()
    x = np.arange(len(labels))
    heights = [0.0 if math.isnan(v) else v for v in values]
    bars = ax.bar(x, heights, color=[matplotlib.colormaps["tab10"](i % 10) for i in range(len(labels))])
    for bar, value in zip(bars, values):
        text = "—" if math.isnan(value) else f"{value:.3f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(metric)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    return figure_data_uri(fig)


def gallery_panel(image: str | Path | np.ndarray, gt_mask: np.ndarray, prob_map: np.ndarray, *,
                  max_side: int = 256, alpha: float = 0.5, name: str = "gallery item",
                  errors_at: float | None = None) -> str:
    """The report's gallery picture: ``pictures.heatmap_panel`` (the picture ``heatmaps/`` holds, at
    ``max_side`` per image; with ``errors_at`` also the TP / FP / FN map) as an embedded PNG."""
    return image_data_uri(Image.fromarray(heatmap_panel(image, gt_mask, prob_map, max_side=max_side, alpha=alpha,
                                                        name=name, errors_at=errors_at)))


def heat_scale_uri() -> str:
    """The overlay colour ramp as an embedded PNG (the report's colour scale)."""
    return image_data_uri(Image.fromarray(heat_scale_strip()))


def thumbnail_uri(image: str | Path, max_side: int = 200) -> str:
    """A small embedded PNG of an image file (the examples of runs without heatmaps)."""
    picture = Image.fromarray(rgb_array(image))
    picture.thumbnail((max_side, max_side))
    return image_data_uri(picture)
