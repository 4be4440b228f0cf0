"""Pixel scoring at the original resolution, inside the evaluation loop, on the accelerator.

For every batch, :class:`PixelCounter` maps each patch-grid heatmap back to its image (the inverse
letterbox, ``data.geometry.unletterbox_stack``: images of one size at once), thresholds it and counts
true / false positive and false negative pixels against the binarised ground truth the loader
workers decoded (``ForgeryDataset(..., with_truth=True)``); ranks each fake's probabilities for its
pixel AUROC; and counts again in IMDLBenCo's convention (``prob > threshold`` against its binarisation
of the mask, decoded by the workers too). Only nine integers per image leave the device
(``metrics.PixelCounts``); no full-resolution probability map ever reaches the CPU. :func:`score_heads` turns the
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

from qwen_forensics.data.collate import IMDLBENCO_TRUTH_KEY, SIZE_KEY, TRUTH_KEY
from qwen_forensics.data.geometry import letterbox_geometry, original_size_heatmap, unletterbox_stack
from qwen_forensics.data.masks import MaskRule, load_binary_mask
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation.metrics import (PixelCounts, PixelMetricAccumulator, combined_score, hybrid_scores,
                                               image_report, imdlbenco_pixel_metrics, twice_mann_whitney_u)

# Columns of the [N, 9] count array, in PixelCounts' order.
COUNT_FIELDS = ("tp", "fp", "fn", "gt", "pixels", "auc_2u", "imdlbenco_tp", "imdlbenco_fp", "imdlbenco_fn")
# Pixels ranked at once for the AUROC (a sort keeps about 40 bytes per pixel: 16M pixels, about 0.7 GB).
RANK_CHUNK = 1 << 24


@dataclass(frozen=True)
class PixelCounter:
    """Counts each image of a batch at its original resolution: ``__call__(heatmaps, batch)`` ->
    int64 [B, 9] (:data:`COUNT_FIELDS`) on the heatmaps' device.

    ``heatmaps``: [B, r, r] probabilities on the letterboxed canvas; ``batch`` carries
    :data:`TRUTH_KEY` and :data:`SIZE_KEY` (the collators copy them from the dataset items), and
    :data:`IMDLBENCO_TRUTH_KEY` for IMDLBenCo's counts (without it, as for masks that are already
    binary, the same ground truth). A pixel is positive when its probability is at or above
    ``threshold``; in IMDLBenCo's counts when it is strictly above.
    """
    image_size: int
    threshold: float

    def __call__(self, heatmaps: torch.Tensor, batch: Mapping) -> torch.Tensor:
        truth, sizes = batch[TRUTH_KEY], batch[SIZE_KEY].tolist()
        imdlbenco_truth = batch.get(IMDLBENCO_TRUTH_KEY, truth)
        counts = torch.zeros(len(sizes), len(COUNT_FIELDS), dtype=torch.int64, device=heatmaps.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault((h, w), []).append(i)
        for (h, w), members in groups.items():
            index = torch.tensor(members, device=heatmaps.device)
            prob = unletterbox_stack(heatmaps[index], letterbox_geometry(h, w, self.image_size))
            positive = prob >= self.threshold
            strict = prob > self.threshold
            counts[index, 1] = positive.sum(dim=(1, 2))
            counts[index, 4] = h * w
            counts[index, 7] = strict.sum(dim=(1, 2))
            fakes = [k for k, i in enumerate(members) if truth[i] is not None]
            if fakes:
                gt = torch.stack([truth[members[k]] for k in fakes]).to(heatmaps.device, non_blocking=True)
                rows = index[fakes]
                tp = (positive[fakes] & gt).sum(dim=(1, 2))
                counts[rows, 0] = tp
                counts[rows, 1] -= tp
                counts[rows, 3] = gt.sum(dim=(1, 2))
                counts[rows, 2] = counts[rows, 3] - tp
                counts[rows, 5] = self._ranks(prob[fakes].flatten(1), gt.flatten(1))
                other = torch.stack([imdlbenco_truth[members[k]] for k in fakes]).to(heatmaps.device,
                                                                                    non_blocking=True)
                strict_tp = (strict[fakes] & other).sum(dim=(1, 2))
                counts[rows, 6] = strict_tp
                counts[rows, 7] -= strict_tp
                counts[rows, 8] = other.sum(dim=(1, 2)) - strict_tp
        return counts

    @staticmethod
    def _ranks(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``metrics.twice_mann_whitney_u`` of each row, a few rows at a time (bounded memory at 1080p)."""
        step = max(1, RANK_CHUNK // prob.shape[1])
        return torch.cat([twice_mann_whitney_u(prob[k:k + step], gt[k:k + step]) for k in range(0, len(prob), step)])


def score_heads(records: Sequence[Record], p_fake: np.ndarray, counts: np.ndarray, *, pixel_threshold: float = 0.5,
                tuned_threshold: float | None = None, imdlbenco: bool = False) -> tuple[dict, list[dict]]:
    """Image and pixel metrics (SPEC 7) plus per-image rows from the loop's counts; returns (metrics, rows).

    Each row holds ``image_path``, ``label``, ``p_fake``, the per-image pixel values of
    ``PixelMetricAccumulator.add_counts`` and ``mask_area``: the fraction of the image's pixels in the
    binarised ground truth at the original resolution (0 for reals), which the report buckets by.
    ``imdlbenco``: also IMDLBenCo's columns (``metrics.imdlbenco_pixel_metrics``) in the metrics and each
    row, as the evaluation scripts report them beside ours (training's validation has no use for them).
    """
    labels = np.array([r.label for r in records])
    report = image_report(labels, p_fake, tuned_threshold=tuned_threshold)
    pixels = PixelMetricAccumulator(pixel_threshold)
    images = [PixelCounts(*row) for row in np.asarray(counts).tolist()]
    rows = []
    for rec, p, image in zip(records, p_fake, images):
        rows.append({"image_path": rec.image_path, "label": rec.label, "p_fake": float(p),
                     **pixels.add_counts(image, rec.label), "mask_area": image.mask_area})
    report.update(pixels.compute())
    report["score"] = combined_score(report["auroc"], report["pixel_f1"], report["pixel_iou"])
    if imdlbenco:
        columns, per_image = imdlbenco_pixel_metrics(images)
        report.update(columns)
        for row, values in zip(rows, per_image):
            row.update(values)
    return report, rows


# The Task 3 evaluation's columns: both verdicts' image metrics, the heads' pixel metrics, the two scores.
HYBRID_IMAGE_KEYS = ("auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned", "f1@tuned", "threshold")
HYBRID_PIXEL_KEYS = ("pixel_f1", "pixel_iou", "ciou", "cdice", "false_alarm", "num_fake_empty_mask", "pixel_f1_pooled",
                     "pixel_iou_pooled", "pixel_auroc", "imdlbenco_pixel_f1", "imdlbenco_pixel_iou")


def score_hybrid(records: Sequence[Record], preds, *, pixel_threshold: float, tuned_lm: float | None,
                 tuned_head: float | None) -> tuple[dict, list[dict]]:
    """The Task 3 evaluation's metrics and per-image rows from ``predictions.HybridPredictions``: the LM's
    and the heads' image metrics (``lm_*``, ``head_*``), the heads' pixel metrics (IMDLBenCo's columns
    included) and ``hybrid_scores``; each row has ``p_fake_lm`` and ``p_fake_head``."""
    heads, rows = score_heads(records, preds.p_fake_head, preds.counts, pixel_threshold=pixel_threshold,
                              tuned_threshold=tuned_head, imdlbenco=True)
    lm = image_report([r.label for r in records], preds.p_fake_lm, tuned_threshold=tuned_lm)
    for row, p_lm in zip(rows, preds.p_fake_lm):
        row["p_fake_head"] = row.pop("p_fake")
        row["p_fake_lm"] = float(p_lm)
    metrics = {"samples": lm["samples"], "positive_ratio": lm["positive_ratio"],
               **{f"lm_{k}": lm[k] for k in HYBRID_IMAGE_KEYS}, **{f"head_{k}": heads[k] for k in HYBRID_IMAGE_KEYS},
               **{k: heads[k] for k in HYBRID_PIXEL_KEYS}, **hybrid_scores(lm["auroc"], heads)}
    return metrics, rows


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
