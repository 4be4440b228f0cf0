"""Pixel scoring at the original resolution: a record's patch-grid heatmap mapped back to its image
(inverse letterbox) against its binarised ground truth, and the SPEC 7 image and pixel metrics of an
evaluated index with its per-image rows."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from qwen_forensics.data.geometry import original_size_heatmap
from qwen_forensics.data.masks import MaskRule, load_binary_mask
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation.metrics import PixelMetricAccumulator, combined_score, image_report


@dataclass(frozen=True)
class HeatmapSource:
    """The patch-grid heatmaps of an evaluated record list and what maps one back to its image."""
    records: Sequence[Record]
    heatmaps: np.ndarray        # [N, h, w] probabilities on the letterboxed canvas, in record order
    data_root: Path
    mask_rule: MaskRule
    image_size: int

    def image_path(self, i: int) -> Path:
        return Path(self.data_root) / self.records[i].image_path

    def full_size(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(binarised ground truth, heatmap) of record ``i``, both at the image's original resolution."""
        gt = load_binary_mask(self.records[i], self.data_root, self.mask_rule)
        return gt, original_size_heatmap(self.heatmaps[i], gt.shape, self.image_size)


def score_heads(source: HeatmapSource, p_fake: np.ndarray, *, pixel_threshold: float = 0.5,
                tuned_threshold: float | None = None) -> tuple[dict, list[dict]]:
    """Image and pixel metrics (SPEC 7) plus per-image rows; returns (metrics, rows).

    Each row holds ``image_path``, ``label``, ``p_fake``, the per-image pixel values of
    ``PixelMetricAccumulator.update`` and ``mask_area``: the fraction of the image's pixels in the
    binarised ground truth at the original resolution (0 for reals), which the report buckets by.
    """
    records = source.records
    labels = np.array([r.label for r in records])
    report = image_report(labels, p_fake, tuned_threshold=tuned_threshold)
    pixels = PixelMetricAccumulator(pixel_threshold)
    rows = []
    # Decoding the masks and resizing the maps release the GIL: threads keep the scoring of a large
    # test set (one full-resolution mask per fake) from taking longer than its inference. Chunks bound
    # how many full-resolution (mask, map) pairs wait for the accumulator at once.
    workers = min(8, os.cpu_count() or 1)
    chunk = 8 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(records), chunk):
            positions = range(start, min(start + chunk, len(records)))
            for i, (gt, prob_map) in zip(positions, pool.map(source.full_size, positions)):
                rec = records[i]
                per_image = pixels.update(prob_map, gt, rec.label)
                rows.append({"image_path": rec.image_path, "label": rec.label, "p_fake": float(p_fake[i]),
                             **per_image, "mask_area": float(gt.mean()) if gt.size else 0.0})
    report.update(pixels.compute())
    report["score"] = combined_score(report["auroc"], report["pixel_f1"], report["pixel_iou"])
    return report, rows
