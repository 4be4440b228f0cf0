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

from qwen_forensics.report.pictures import overlay_array


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


def _rgb_array(image: str | Path | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        arr = image
    else:
        with Image.open(image) as img:
            arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"gallery image must be H x W (grey) or H x W x 3 (RGB), got shape {arr.shape}")
    return np.clip(arr, 0, 255).astype(np.uint8)


def gallery_panel(image: str | Path | np.ndarray, gt_mask: np.ndarray, prob_map: np.ndarray, *,
                  max_side: int = 256, alpha: float = 0.5, name: str = "gallery item") -> str:
    """image | ground truth | heatmap overlay, each scaled to at most ``max_side`` px, as one PNG.

    ``gt_mask`` (bool) and ``prob_map`` (probabilities in [0, 1]) are at the image's original size,
    as ``data.geometry.original_size_heatmap`` returns them. The overlay is ``visualize.overlay_array``,
    the blend of the heatmap pictures, so an image looks the same in the report and in ``heatmaps/``.
    """
    rgb = _rgb_array(image)
    gt_mask, prob_map = np.asarray(gt_mask), np.asarray(prob_map, dtype=np.float32)
    if gt_mask.shape != rgb.shape[:2] or prob_map.shape != rgb.shape[:2]:
        raise ValueError(f"{name}: image {rgb.shape[:2]}, mask {gt_mask.shape} and heatmap {prob_map.shape} must have "
                         "the same size; map the heatmap to the original resolution first (original_size_heatmap)")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.float32)
    prob = np.asarray(Image.fromarray(np.clip(prob_map, 0, 1)).resize(size, Image.BILINEAR), dtype=np.float32)
    gt = np.asarray(Image.fromarray(gt_mask.astype(np.uint8) * 255).resize(size, Image.NEAREST))
    overlay = overlay_array(small.astype(np.uint8), prob, alpha)
    gap = np.full((size[1], 4, 3), 255, dtype=np.uint8)
    panel = np.concatenate([small.astype(np.uint8), gap, np.repeat(gt[..., None], 3, axis=-1), gap,
                            overlay.astype(np.uint8)], axis=1)
    return image_data_uri(Image.fromarray(panel))
