"""Heatmap pictures: the evaluation panel (image | ground truth | overlay), the same picture in
``heatmaps/`` and in the report's gallery, and for ``predict.py`` the probability map alone and the
overlay alone at the image's original resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


# The ramp of :func:`_heat_colors` as a CSS background: the colour scale drawn beside the overlays.
HEAT_CSS_GRADIENT = "linear-gradient(to right, rgb(0,0,0), rgb(255,0,0), rgb(255,255,0))"


def _heat_colors(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> RGB uint8 on a black-red-yellow ramp (no extra plotting dependency)."""
    p = np.clip(prob, 0.0, 1.0)[..., None]
    ramp = np.concatenate([np.clip(2 * p, 0, 1), np.clip(2 * p - 1, 0, 1), np.zeros_like(p)], axis=-1)
    return (ramp * 255).astype(np.uint8)


def overlay_array(rgb: np.ndarray, prob_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (H x W x 3 uint8) blended with the heat colours of ``prob_map`` (H x W)."""
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * _heat_colors(prob_map)).astype(np.uint8)


def _save(image: Image.Image, out_path: str | Path, **options) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, **options)
    return out_path


def grey_levels(prob_map: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as 8-bit grey levels (0 = 0.0, 255 = 1.0)."""
    return np.round(np.clip(prob_map, 0.0, 1.0) * 255).astype(np.uint8)


def save_probability_map(prob_map: np.ndarray, out_path: str | Path) -> Path:
    """The heatmap itself as an 8-bit grey PNG at its size (:func:`grey_levels`; uint8 maps are taken as
    levels already), for further processing. Fast zlib level: heatmaps are smooth and compress anyway."""
    levels = prob_map if prob_map.dtype == np.uint8 else grey_levels(prob_map)
    return _save(Image.fromarray(levels), out_path, compress_level=1)


def save_binary_mask(mask: np.ndarray, out_path: str | Path) -> Path:
    """A boolean mask as a one-channel PNG of 0 and 255 at its size (a challenge submission's mask)."""
    return _save(Image.fromarray(mask.astype(np.uint8) * 255), out_path, compress_level=1)


def save_overlay_jpeg(rgb: np.ndarray, prob_map: np.ndarray, out_path: str | Path, *, alpha: float = 0.5) -> Path:
    """``rgb`` (H x W x 3 uint8, e.g. a thumbnail of the image) with ``prob_map`` (same H x W) blended over
    it, as a JPEG (quality 90): a picture to look at, small and quick to write."""
    if prob_map.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {prob_map.shape} does not match the picture {rgb.shape[0]}x{rgb.shape[1]}")
    return _save(Image.fromarray(overlay_array(rgb, prob_map, alpha)), out_path, quality=90)


def rgb_array(image: str | Path | np.ndarray) -> np.ndarray:
    """An image file or array as H x W x 3 uint8 RGB (grey arrays are repeated)."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        with Image.open(image) as img:
            arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be H x W (grey) or H x W x 3 (RGB), got shape {arr.shape}")
    return np.clip(arr, 0, 255).astype(np.uint8)


PANEL_GAP = 4  # white pixels between the pictures of a panel
# The error map's colours: where the thresholded heatmap and the ground truth agree or not.
ERROR_COLOURS = {"TP": (0, 170, 0), "FP": (220, 0, 0), "FN": (0, 90, 255), "TN": (235, 235, 235)}


def error_map(gt: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """H x W x 3 uint8: true positives green, false positives red, false negatives blue, the rest light grey
    (a pixel is called forged when ``prob >= threshold``, the evaluation's pixel rule)."""
    called, truth = prob >= threshold, gt.astype(bool)
    out = np.empty((*gt.shape, 3), dtype=np.uint8)
    out[:] = ERROR_COLOURS["TN"]
    out[called & truth] = ERROR_COLOURS["TP"]
    out[called & ~truth] = ERROR_COLOURS["FP"]
    out[~called & truth] = ERROR_COLOURS["FN"]
    return out


def heat_scale_strip(width: int = 256, height: int = 14) -> np.ndarray:
    """The overlay's colour ramp from P 0 (left) to 1 (right), for the colour scale beside the pictures."""
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    return _heat_colors(ramp)


def heatmap_panel(image: str | Path | np.ndarray, gt_mask: np.ndarray, prob_map: np.ndarray, *, max_side: int,
                  alpha: float = 0.5, name: str = "image", errors_at: float | None = None) -> np.ndarray:
    """image | ground truth | heatmap overlay, each scaled to at most ``max_side`` px, side by side; with
    ``errors_at`` (the pixel threshold) a fourth picture, the :func:`error_map` (TP / FP / FN).

    ``gt_mask`` (bool) and ``prob_map`` (probabilities in [0, 1]) are at the image's original size, as
    ``data.geometry.original_size_heatmap`` returns them; the overlay is :func:`overlay_array`."""
    rgb = rgb_array(image)
    gt_mask, prob_map = np.asarray(gt_mask), np.asarray(prob_map, dtype=np.float32)
    if gt_mask.shape != rgb.shape[:2] or prob_map.shape != rgb.shape[:2]:
        raise ValueError(f"{name}: image {rgb.shape[:2]}, mask {gt_mask.shape} and heatmap {prob_map.shape} must have "
                         "the same size; map the heatmap to the original resolution first (original_size_heatmap)")
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.uint8)
    prob = np.asarray(Image.fromarray(np.clip(prob_map, 0, 1)).resize(size, Image.BILINEAR), dtype=np.float32)
    gt = np.asarray(Image.fromarray(gt_mask.astype(np.uint8) * 255).resize(size, Image.NEAREST))
    gap = np.full((size[1], PANEL_GAP, 3), 255, dtype=np.uint8)
    parts = [small, gap, np.repeat(gt[..., None], 3, axis=-1), gap, overlay_array(small, prob, alpha)]
    if errors_at is not None:
        parts += [gap, error_map(gt > 127, prob, errors_at)]
    return np.concatenate(parts, axis=1)


def save_heatmap_panel(image_path: str | Path, prob_map: np.ndarray, gt_mask: np.ndarray, out_path: str | Path,
                       *, max_side: int = 512, alpha: float = 0.5) -> Path:
    """Write :func:`heatmap_panel` as a PNG (``heatmaps/`` of the evaluations)."""
    return _save(Image.fromarray(heatmap_panel(image_path, gt_mask, prob_map, max_side=max_side, alpha=alpha,
                                               name=str(image_path))), out_path)
