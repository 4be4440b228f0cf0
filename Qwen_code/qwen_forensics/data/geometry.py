"""Letterbox geometry: original image <-> square model input, for images, masks and heatmaps.

Coordinates follow the pixel-edge convention throughout (pixel k covers [k, k+1)), which is what
PIL's resize and torch's ``align_corners=False`` use, so the forward resize and the inverse map
describe the same geometry at any resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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


def content_cells(lb: Letterbox, res: int) -> tuple[slice, slice]:
    """Rows and columns of an ``res x res`` map over the canvas whose cells touch the image content.

    Cell i covers canvas ``[i, i+1) * size / res``; it touches the content when that span overlaps
    the content span by a positive length. Integer arithmetic, so a content edge that lands exactly
    on a cell edge never picks up the padding cell next to it through rounding.
    """
    if res <= 0:
        raise ValueError(f"map resolution must be positive, got {res}.")

    def span(pad: int, n_new: int) -> slice:
        first = pad * res // lb.size
        stop = -(-(pad + n_new) * res // lb.size)
        return slice(first, stop)

    return span(lb.pad_top, lb.new_h), span(lb.pad_left, lb.new_w)


def _axis_weights(n_orig: int, n_new: int, pad: int, cells: slice, lb: Letterbox, res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one axis: per original pixel, the two content cells to blend (relative to ``cells``) and
    the weight of the second.

    Pixel centres go to canvas coordinates, then to cell coordinates (cell k's centre is at k) and
    are clamped to the centres of the first and last content cells, which holds the edge cell's
    value out to the image border instead of blending in a padding cell. float64 on the host, so
    the positions do not depend on the map's device or dtype.
    """
    centres = pad + (np.arange(n_orig, dtype=np.float64) + 0.5) * (n_new / n_orig)
    u = np.clip(centres * (res / lb.size) - 0.5, cells.start, cells.stop - 1) - cells.start
    lo = np.minimum(np.floor(u).astype(np.int64), cells.stop - cells.start - 1)
    hi = np.minimum(lo + 1, cells.stop - cells.start - 1)
    return lo, hi, (u - lo).astype(np.float32)


def unletterbox(map_2d: np.ndarray | torch.Tensor, lb: Letterbox) -> np.ndarray | torch.Tensor:
    """Map a square model-space map (any resolution r x r) back to ``orig_h x orig_w``, float32.

    The map is taken to cover the whole canvas, so cell (i, j) of an r x r map covers canvas
    coordinates [i, i+1) * size / r. The rule:

    1. Crop: keep only the cells that touch the image content (`content_cells`), including edge
       cells that are partly padding. Cells wholly in the padding carry no information about the
       image and are treated as absent, so they can never leak into the border rows.
    2. Sample: each original pixel centre is placed in canvas coordinates and the cropped map is
       interpolated bilinearly there (the same sample positions as ``grid_sample`` with
       ``align_corners=False``). Positions beyond the centre of the outermost content cell hold
       that cell's value (clamp), rather than extrapolating.

    Interpolation uses ``torch.lerp`` (``a + w * (b - a)``, or ``b - (1 - w) * (b - a)`` for
    ``w >= 0.5``), which returns ``a`` exactly when ``a == b``. So a map that is constant ``c``
    over the content cells comes back as exactly ``c`` at every pixel, edges included, for any
    aspect ratio and resolution: a perfect full-frame prediction scores F1 1.0, and a uniform one
    on a real gives false_alarm exactly 0 or 1, at any threshold.
    For a full-canvas map (r = size) the cells are canvas pixels and the crop is the content
    rectangle. Returns the input's type (numpy, or torch on its device).
    """
    as_numpy = not isinstance(map_2d, torch.Tensor)
    grid_map = torch.as_tensor(np.asarray(map_2d) if as_numpy else map_2d).float()
    if grid_map.ndim != 2 or grid_map.shape[0] != grid_map.shape[1]:
        raise ValueError(f"unletterbox expects a square 2-D map, got shape {tuple(grid_map.shape)}.")
    out = unletterbox_stack(grid_map[None], lb)[0]
    return out.cpu().numpy() if as_numpy else out


def unletterbox_stack(maps: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """:func:`unletterbox` of ``n`` square maps [n, r, r] of images of one size at once: [n, orig_h, orig_w]
    float32 on the maps' device, each element exactly :func:`unletterbox`'s (the same lerps)."""
    maps = maps.float()
    res = maps.shape[-1]
    rows, cols = content_cells(lb, res)
    cropped = maps[:, rows, cols]
    device = maps.device

    def on_device(arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(a, device=device) for a in arrays)

    y_lo, y_hi, wy = on_device(_axis_weights(lb.orig_h, lb.new_h, lb.pad_top, rows, lb, res))
    x_lo, x_hi, wx = on_device(_axis_weights(lb.orig_w, lb.new_w, lb.pad_left, cols, lb, res))
    # Separable bilinear, x first on the small (content rows, orig_w) maps, so the full-size step
    # gathers whole rows (about 10x faster than gathering columns at 1080x1920).
    along_x = torch.lerp(cropped[:, :, x_lo], cropped[:, :, x_hi], wx[None, None, :])
    return torch.lerp(along_x[:, y_lo], along_x[:, y_hi], wy[None, :, None])


def original_size_heatmap(heatmap: np.ndarray, gt_shape: tuple[int, int], image_size: int) -> np.ndarray:
    """Patch-grid probabilities -> original image resolution, letterbox padding cropped."""
    lb = letterbox_geometry(gt_shape[0], gt_shape[1], image_size)
    return unletterbox(heatmap, lb)
