"""The one mask binarisation rule, applied once at the original resolution.

Fake masks are soft JPEGs: a pixel's value says how strongly it was changed, plus JPEG noise.
Training targets, evaluation ground truth and every metric go through `binarize_mask`, so the
whole project agrees on what "manipulated pixel" means.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qwen_forensics.data.records import Record


@dataclass(frozen=True)
class MaskRule:
    """A pixel is manipulated when ``value >= rel * quantile(mask, quantile)`` and ``value > 0``.

    Defaults are the seed's rule (``>= 0.2 * p99``), with values scaled to [0, 1].
    """

    rel: float = 0.2
    quantile: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 < self.rel <= 1.0:
            raise ValueError(f"mask rule rel must be in (0, 1], got {self.rel}; fix the mask rule in the config.")
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"mask rule quantile must be in (0, 1], got {self.quantile}; fix the mask rule in the config.")


def binarize_mask(mask: np.ndarray, rule: MaskRule = MaskRule()) -> np.ndarray:
    """Binarise one soft mask (H x W; uint8 0..255, or float already in [0, 1]) into a bool array.

    Why relative to the mask's own high quantile: masks differ in overall strength (a subtle
    blend vs. a pasted face), so a fixed absolute threshold would keep all of one and none of
    the other; the threshold follows each mask's scale. The high quantile instead of the maximum
    keeps a few bright JPEG-ringing pixels from setting the scale.

    Why also ``value > 0``: for an all-zero mask (or one whose changed area is under 1 - quantile
    of the pixels) the quantile is 0, the threshold becomes 0, and ``>= 0`` would mark every pixel
    as manipulated. Requiring a positive value makes an all-zero mask empty, without any division.
    Caveat kept from the seed's rule: when the changed area is that small, every nonzero pixel,
    JPEG noise included, counts as manipulated.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"binarize_mask expects a 2-D (H x W) mask, got shape {mask.shape}; convert the mask image to grayscale first.")
    if mask.dtype == np.uint8:
        values = mask.astype(np.float32) / 255.0
    elif mask.dtype == np.bool_:
        values = mask.astype(np.float32)
    elif np.issubdtype(mask.dtype, np.floating):
        values = mask.astype(np.float32, copy=False)
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise ValueError(f"float masks must lie in [0, 1], got range [{values.min()}, {values.max()}]; pass uint8 masks unscaled.")
    else:
        raise ValueError(f"binarize_mask expects a uint8, bool or float mask, got dtype {mask.dtype}.")
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    threshold = rule.rel * float(np.quantile(values, rule.quantile))
    return (values >= threshold) & (values > 0.0)


def imdlbenco_binarize(rgb: np.ndarray) -> np.ndarray:
    """IMDLBenCo's ground truth of a mask image decoded as RGB (H x W x 3 uint8): a pixel is manipulated
    when the mean of its three channels is above 127.5 (its ``abstract_dataset``). Only the
    IMDLBenCo-convention metrics use it (``evaluation.metrics``), so that they can sit next to a table
    IMDLBenCo produced; everything else uses :func:`binarize_mask`."""
    # mean > 127.5 is sum > 382.5; the integer sum avoids a float copy of a full-resolution mask.
    return rgb.sum(axis=2, dtype=np.uint16) > 382


def load_binary_mask(record: Record, data_root: str | os.PathLike, rule: MaskRule = MaskRule()) -> np.ndarray:
    """The record's ground-truth mask at the original image resolution (bool, H x W).

    Reals give zeros of their ``"HxW"`` (of the image's own size for a foreign index's authentic image);
    fakes read the mask image as grayscale and binarise it.
    """
    if record.label == 0:
        if record.size_from_image:
            with Image.open(Path(data_root) / record.image_path) as img:
                return np.zeros((img.height, img.width), dtype=bool)
        if record.mask_size is None:
            raise ValueError(f'record {record.index} ({record.image_path}) is real but has no "HxW" mask_path; run check_data.py on the index.')
        return np.zeros(record.mask_size, dtype=bool)
    with Image.open(_mask_file(record, data_root)) as img:
        gray = np.asarray(img.convert("L"))
    return binarize_mask(gray, rule)


def _mask_file(record: Record, data_root: str | os.PathLike) -> Path:
    if record.mask_path is None:
        raise ValueError(f"record {record.index} ({record.image_path}) is fake but names no mask image; run check_data.py on the index.")
    return Path(data_root) / record.mask_path


def load_fake_truths(record: Record, data_root: str | os.PathLike,
                     rule: MaskRule = MaskRule()) -> tuple[np.ndarray, np.ndarray]:
    """A fake's two ground truths from one decode of its mask: ours (:func:`binarize_mask` of the grayscale
    mask, exactly what :func:`load_binary_mask` gives) and IMDLBenCo's (:func:`imdlbenco_binarize`)."""
    with Image.open(_mask_file(record, data_root)) as img:
        gray = np.asarray(img.convert("L"))
        # A grayscale mask decodes to three equal channels: their mean is the grey level itself.
        imdlbenco = gray > 127 if img.mode == "L" else imdlbenco_binarize(np.asarray(img.convert("RGB")))
    return binarize_mask(gray, rule), imdlbenco
