"""Letterbox geometry: original image <-> square model input, for images, masks and heatmaps.

Coordinates follow the pixel-edge convention throughout (pixel k covers [k, k+1)), which is what
PIL's resize and torch's ``align_corners=False`` use, so the forward resize and the inverse map
describe the same geometry at any resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """Where an ``orig_h x orig_w`` image sits inside the ``size x size`` model canvas."""

    orig_h: int
    orig_w: int
    size: int
    new_h: int
    new_w: int
    pad_top: int
    pad_left: int


def letterbox_geometry(h: int, w: int, size: int) -> Letterbox:
    """Scale by ``size / max(h, w)`` keeping the aspect ratio, and centre on the square canvas."""
    if h <= 0 or w <= 0 or size <= 0:
        raise ValueError(f"letterbox needs positive sizes, got image {h}x{w} and canvas {size}.")
    scale = size / max(h, w)
    new_h = min(size, max(1, round(h * scale)))
    new_w = min(size, max(1, round(w * scale)))
    return Letterbox(h, w, size, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2)


def letterbox_image(img: Image.Image, size: int) -> tuple[Image.Image, Letterbox]:
    """Resize (bicubic) and pad with black to an RGB ``size x size`` image."""
    lb = letterbox_geometry(img.height, img.width, size)
    resized = img.convert("RGB").resize((lb.new_w, lb.new_h), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, (lb.pad_left, lb.pad_top))
    return canvas, lb


def letterbox_mask(mask: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Put an ``orig_h x orig_w`` mask (bool or float in [0, 1]) on the canvas: float32 ``size x size``.

    The resize is area-weighted (PIL BOX on float data): each canvas pixel holds the fraction of
    its footprint that is masked, so mask area is preserved and thin regions fade instead of
    vanishing or growing. Padding is 0.
    """
    mask = np.asarray(mask)
    if mask.shape != (lb.orig_h, lb.orig_w):
        raise ValueError(f"mask is {mask.shape} but the letterbox was computed for {lb.orig_h}x{lb.orig_w}; mask and image sizes must match.")
    img = Image.fromarray(mask.astype(np.float32))
    resized = np.asarray(img.resize((lb.new_w, lb.new_h), Image.BOX), dtype=np.float32)
    out = np.zeros((lb.size, lb.size), dtype=np.float32)
    out[lb.pad_top : lb.pad_top + lb.new_h, lb.pad_left : lb.pad_left + lb.new_w] = resized
    return out


def unletterbox(map_2d: np.ndarray | torch.Tensor, lb: Letterbox) -> np.ndarray | torch.Tensor:
    """Map a square model-space map (any resolution r x r) back to ``orig_h x orig_w``, float32.

    The map is taken to cover the whole canvas, so cell (i, j) of an r x r map covers canvas
    coordinates [i, i+1) * size / r. Each original pixel centre is placed in canvas coordinates
    and the map is sampled there bilinearly. Sample points are clamped to the centres of the
    outermost content pixels of the canvas, so padding never bleeds into the image border (this is
    the crop). Working in continuous coordinates keeps the crop right when the padding edge falls
    inside a cell, e.g. for the 32 x 32 patch grid. Returns the input's type (numpy, or torch on
    its device).
    """
    as_numpy = not isinstance(map_2d, torch.Tensor)
    grid_map = torch.as_tensor(np.asarray(map_2d) if as_numpy else map_2d).float()
    if grid_map.ndim != 2 or grid_map.shape[0] != grid_map.shape[1]:
        raise ValueError(f"unletterbox expects a square 2-D map, got shape {tuple(grid_map.shape)}.")
    device = grid_map.device

    def canvas_coords(n_orig: int, n_new: int, pad: int) -> torch.Tensor:
        centres = pad + (torch.arange(n_orig, device=device, dtype=torch.float32) + 0.5) * (n_new / n_orig)
        return centres.clamp(pad + 0.5, pad + n_new - 0.5)

    # align_corners=False: normalised -1 / +1 are the outer edges of the map, i.e. canvas 0 / size.
    gy = (2.0 * canvas_coords(lb.orig_h, lb.new_h, lb.pad_top) / lb.size - 1.0).view(-1, 1).expand(lb.orig_h, lb.orig_w)
    gx = (2.0 * canvas_coords(lb.orig_w, lb.new_w, lb.pad_left) / lb.size - 1.0).view(1, -1).expand(lb.orig_h, lb.orig_w)
    grid = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    out = F.grid_sample(grid_map[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    return out.cpu().numpy() if as_numpy else out
