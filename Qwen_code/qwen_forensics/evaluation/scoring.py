"""Pixel scoring at the original resolution, inside the evaluation loop, on the accelerator.

For every batch, :class:`PixelCounter` maps each patch-grid heatmap back to its image (the inverse
letterbox, ``data.geometry.unletterbox_stack``: images of one size at once), thresholds it and counts
true / false positive and false negative pixels against the binarised ground truth the loader
workers decoded (``ForgeryDataset(..., with_truth=True)``). Only five integers per image leave the
device; no full-resolution probability map ever reaches the CPU. :func:`score_heads` turns the
gathered counts into the SPEC 7 metrics and the per-image rows, the same numbers the per-image
full-map path gives (``PixelMetricAccumulator.update``: tested identical on the CPU).

:class:`HeatmapSource` maps single records back on the host, for the few pictures an evaluation
draws (``outputs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from qwen_forensics.data.geometry import letterbox_geometry, original_size_heatmap, unletterbox_stack
from qwen_forensics.data.masks import MaskRule, load_binary_mask
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation.metrics import PixelCounts, PixelMetricAccumulator, combined_score, image_report

# Columns of the [N, 5] count array, in PixelCounts' order.
COUNT_FIELDS = ("tp", "fp", "fn", "gt", "pixels")
TRUTH_KEY = "truth"        # batch key: per image the binarised ground truth (bool [H, W]) or None (a real)
SIZE_KEY = "original_hw"   # batch key: [B, 2] original image height and width


@dataclass(frozen=True)
class PixelCounter:
    """Counts each image of a batch at its original resolution: ``__call__(heatmaps, batch)`` ->
    int64 [B, 5] (:data:`COUNT_FIELDS`) on the heatmaps' device.

    ``heatmaps``: [B, r, r] probabilities on the letterboxed canvas; ``batch`` carries
    :data:`TRUTH_KEY` and :data:`SIZE_KEY` (the collators copy them from the dataset items). A pixel is
    positive when its probability is at or above ``threshold``.
    """
    image_size: int
    threshold: float

    def __call__(self, heatmaps: torch.Tensor, batch: Mapping) -> torch.Tensor:
        truth, sizes = batch[TRUTH_KEY], batch[SIZE_KEY].tolist()
        counts = torch.zeros(len(sizes), len(COUNT_FIELDS), dtype=torch.int64, device=heatmaps.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault((h, w), []).append(i)
        for (h, w), members in groups.items():
            index = torch.tensor(members, device=heatmaps.device)
            positive = unletterbox_stack(heatmaps[index], letterbox_geometry(h, w, self.image_size)) >= self.threshold
            counts[index, 1] = positive.sum(dim=(1, 2))
            counts[index, 4] = h * w
            fakes = [k for k, i in enumerate(members) if truth[i] is not None]
            if fakes:
                gt = torch.stack([truth[members[k]] for k in fakes]).to(heatmaps.device, non_blocking=True)
                rows = index[fakes]
                tp = (positive[fakes] & gt).sum(dim=(1, 2))
                counts[rows, 0] = tp
                counts[rows, 1] -= tp
                counts[rows, 3] = gt.sum(dim=(1, 2))
                counts[rows, 2] = counts[rows, 3] - tp
        return counts


def score_heads(records: Sequence[Record], p_fake: np.ndarray, counts: np.ndarray, *, pixel_threshold: float = 0.5,
                tuned_threshold: float | None = None) -> tuple[dict, list[dict]]:
    """Image and pixel metrics (SPEC 7) plus per-image rows from the loop's counts; returns (metrics, rows).

    Each row holds ``image_path``, ``label``, ``p_fake``, the per-image pixel values of
    ``PixelMetricAccumulator.add_counts`` and ``mask_area``: the fraction of the image's pixels in the
    binarised ground truth at the original resolution (0 for reals), which the report buckets by.
    """
    labels = np.array([r.label for r in records])
    report = image_report(labels, p_fake, tuned_threshold=tuned_threshold)
    pixels = PixelMetricAccumulator(pixel_threshold)
    rows = []
    for rec, p, row in zip(records, p_fake, np.asarray(counts).tolist()):
        image = PixelCounts(*row)
        rows.append({"image_path": rec.image_path, "label": rec.label, "p_fake": float(p),
                     **pixels.add_counts(image, rec.label), "mask_area": image.mask_area})
    report.update(pixels.compute())
    report["score"] = combined_score(report["auroc"], report["pixel_f1"], report["pixel_iou"])
    return report, rows


@dataclass(frozen=True)
class HeatmapSource:
    """The patch-grid heatmaps of an evaluated record list and what maps one back to its image (on the
    host, for the pictures)."""
    records: Sequence[Record]
    heatmaps: np.ndarray        # [N, h, w] probabilities on the letterboxed canvas, in record order
    data_root: Path
    mask_rule: MaskRule
    image_size: int

    def image_path(self, i: int) -> Path:
        return Path(self.data_root) / self.records[i].image_path

    def full_size(self, i: int, heatmap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(binarised ground truth, heatmap) of record ``i``, both at the image's original resolution
        (``heatmap``: record ``i``'s patch-grid map when it is not yet in ``heatmaps``)."""
        gt = load_binary_mask(self.records[i], self.data_root, self.mask_rule)
        heatmap = self.heatmaps[i] if heatmap is None else heatmap
        return gt, original_size_heatmap(heatmap, gt.shape, self.image_size)
