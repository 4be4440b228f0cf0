"""Heatmap pictures at the original resolution: the evaluation panel (original | overlay | ground truth),
and for ``predict.py`` the probability map alone and the overlay alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _heat_colors(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> RGB uint8 on a black-red-yellow ramp (no extra plotting dependency)."""
    p = np.clip(prob, 0.0, 1.0)[..., None]
    ramp = np.concatenate([np.clip(2 * p, 0, 1), np.clip(2 * p - 1, 0, 1), np.zeros_like(p)], axis=-1)
    return (ramp * 255).astype(np.uint8)


def overlay_array(rgb: np.ndarray, prob_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (H x W x 3 uint8) blended with the heat colours of ``prob_map`` (H x W)."""
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * _heat_colors(prob_map)).astype(np.uint8)


def _save(image: Image.Image, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)
    return out_path


def save_probability_map(prob_map: np.ndarray, out_path: str | Path) -> Path:
    """The heatmap itself as an 8-bit grey PNG at its size (0 = 0.0, 255 = 1.0), for further processing."""
    return _save(Image.fromarray(np.round(np.clip(prob_map, 0.0, 1.0) * 255).astype(np.uint8)), out_path)


def save_overlay(image: Image.Image, prob_map: np.ndarray, out_path: str | Path, *, alpha: float = 0.5) -> Path:
    """The image with the heatmap blended over it, at the image's own resolution."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if prob_map.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {prob_map.shape} does not match the image {rgb.shape[0]}x{rgb.shape[1]}; map "
                         "predictions back with unletterbox first")
    return _save(Image.fromarray(overlay_array(rgb, prob_map, alpha)), out_path)


def save_heatmap_panel(image_path: str | Path, prob_map: np.ndarray, gt_mask: np.ndarray, out_path: str | Path,
                       *, max_side: int = 512, alpha: float = 0.5) -> Path:
    """Write a three-panel PNG. ``prob_map`` and ``gt_mask`` are at the image's original size."""
    with Image.open(image_path) as img:
        image = img.convert("RGB")
    if prob_map.shape != (image.height, image.width) or gt_mask.shape != prob_map.shape:
        raise ValueError(f"{image_path}: heatmap {prob_map.shape} / mask {gt_mask.shape} do not match the image "
                         f"{image.height}x{image.width}; map predictions back with unletterbox first")
    rgb = np.asarray(image, dtype=np.uint8)
    gt = np.repeat((gt_mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    panel = np.concatenate([rgb, overlay_array(rgb, prob_map, alpha), gt], axis=1)
    out = Image.fromarray(panel)
    scale = max_side / max(image.height, image.width)
    if scale < 1:
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR)
    return _save(out, out_path)
