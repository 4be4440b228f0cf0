"""Distributed-safe prediction with the forensic heads, and scoring at the original resolution.

Each process predicts its shard of the loader and ``gather_in_order`` gathers everything once at
the end, drops the records that the distributed sampler repeats to even out the last batch (by
dataset position), and checks that every record came back exactly once. Scoring happens on the
gathered, small patch-grid heatmaps:
each is mapped back to its image's original size (padding cropped) and compared with the ground
truth binarised once by the configured rule (SPEC 7).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from .data.geometry import letterbox_geometry, unletterbox
from .data.masks import MaskRule, load_binary_mask
from .data.records import Record
from .metrics import PixelMetricAccumulator, combined_score, image_report
from .training import autocast


@dataclass
class HeadPredictions:
    """Per-record outputs, ordered by position in the evaluated record list."""
    p_fake: np.ndarray          # [N] sigmoid of the classifier logit
    heatmaps: np.ndarray        # [N, H, W] evidence probabilities on the patch grid (letterboxed canvas)


def gather_in_order(accelerator: Accelerator, positions: list[torch.Tensor], values: dict[str, list[torch.Tensor]],
                    num_records: int) -> dict[str, np.ndarray]:
    """Concatenate per-batch tensors, gather across processes, and order by record position.

    ``positions`` holds each batch's dataset positions, ``values`` per key the matching per-batch
    tensors (first dimension = batch); floating outputs come back as float32 arrays. Under N processes the sampler completes the last round of
    batches with records from the start of the dataset; those repeats are dropped by position.
    (``gather_for_metrics`` cannot do it here: it trims only while the loader is still being
    iterated, and this gather runs once after the loop.) Raises if a record is missing, or if
    more repeats arrive than one padded round can hold, which would silently bias every metric.
    """
    pos = torch.cat(positions)
    cat = {k: torch.cat(v) for k, v in values.items()}
    for key, tensor in cat.items():
        if tensor.shape[0] != pos.shape[0]:
            raise ValueError(f"gather_in_order: {key!r} has {tensor.shape[0]} rows for {pos.shape[0]} positions")
    largest_batch = max(len(p) for p in positions)
    pos, cat = accelerator.gather((pos, cat))
    pos = pos.cpu().numpy()
    unique, first = np.unique(pos, return_index=True)
    repeats = len(pos) - len(unique)
    allowed = accelerator.num_processes * largest_batch - 1 if accelerator.num_processes > 1 else 0
    if len(unique) != num_records or unique[0] != 0 or unique[-1] != num_records - 1 or repeats > allowed:
        raise RuntimeError(f"evaluation gathered {len(pos)} outputs ({len(unique)} distinct positions, {repeats} "
                           f"repeated, at most {allowed} expected from sampler padding) for {num_records} records; "
                           "every record must come back exactly once")
    keep = torch.from_numpy(first)
    # bf16 has no numpy dtype; integer outputs (e.g. generated token ids) keep theirs.
    return {k: (v.cpu()[keep].float() if v.is_floating_point() else v.cpu()[keep]).numpy() for k, v in cat.items()}


@torch.no_grad()
def predict_heads(model: torch.nn.Module, loader, accelerator: Accelerator, amp_dtype: str,
                  num_records: int) -> HeadPredictions:
    """Run the ViT + heads over ``loader`` (prepared by ``accelerator``) on every process."""
    model.eval()
    positions, probs, heats = [], [], []
    for batch in loader:
        with autocast(accelerator.device, amp_dtype):
            out = model(batch["pixel_values"], batch["image_grid_thw"])
        positions.append(batch["position"])
        probs.append(torch.sigmoid(out["cls_logit"].float()))
        heats.append(torch.sigmoid(out["heatmap_logit"].float()))
    got = gather_in_order(accelerator, positions, {"p": probs, "h": heats}, num_records)
    return HeadPredictions(p_fake=got["p"], heatmaps=got["h"])


def original_size_heatmap(heatmap: np.ndarray, gt_shape: tuple[int, int], image_size: int) -> np.ndarray:
    """Patch-grid probabilities -> original image resolution, letterbox padding cropped."""
    lb = letterbox_geometry(gt_shape[0], gt_shape[1], image_size)
    return unletterbox(heatmap, lb)


def score_heads(records: list[Record], preds: HeadPredictions, *, data_root: str | Path, mask_rule: MaskRule,
                image_size: int, pixel_threshold: float = 0.5, tuned_threshold: float | None = None,
                keep_maps: set[int] = frozenset()) -> tuple[dict, list[dict], dict[int, np.ndarray]]:
    """Image and pixel metrics (SPEC 7) plus per-image rows; returns (metrics, rows, kept maps).

    Each row holds ``image_path``, ``label``, ``p_fake``, the per-image pixel values of
    ``PixelMetricAccumulator.update`` and ``mask_area``: the fraction of the image's pixels in the
    binarised ground truth at the original resolution (0 for reals), which the report buckets by.
    ``keep_maps``: positions whose original-resolution heatmap is returned for pictures.
    """
    labels = np.array([r.label for r in records])
    report = image_report(labels, preds.p_fake, tuned_threshold=tuned_threshold)
    pixels = PixelMetricAccumulator(pixel_threshold)
    rows, kept = [], {}

    def maps(i: int) -> tuple[np.ndarray, np.ndarray]:
        gt = load_binary_mask(records[i], data_root, mask_rule)
        return gt, original_size_heatmap(preds.heatmaps[i], gt.shape, image_size)

    # Decoding the masks and resizing the maps release the GIL: threads keep the scoring of a large
    # test set (one full-resolution mask per fake) from taking longer than its inference.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, (rec, (gt, prob_map)) in enumerate(zip(records, pool.map(maps, range(len(records))))):
            per_image = pixels.update(prob_map, gt, rec.label)
            rows.append({"image_path": rec.image_path, "label": rec.label, "p_fake": float(preds.p_fake[i]),
                         **per_image, "mask_area": float(gt.mean()) if gt.size else 0.0})
            if i in keep_maps:
                kept[i] = prob_map
    report.update(pixels.compute())
    report["score"] = combined_score(report["auroc"], report["pixel_f1"], report["pixel_iou"])
    return report, rows, kept

