"""Torch datasets: validated records (letterboxed image and training mask per item) and unlabelled
image files (prediction)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .geometry import letterbox_image, letterbox_mask
from .masks import MaskRule, load_binary_mask
from .records import Record


class ForgeryDataset(Dataset):
    """Items are dicts: ``image`` (letterboxed PIL RGB, ``image_size`` square), ``mask`` (float32
    tensor [image_size, image_size]: the binarised mask, letterboxed with area weighting), ``label``,
    ``letterbox`` (the geometry, for mapping predictions back), ``record`` and ``position`` (the item's
index in ``records``: distributed evaluation orders gathered outputs by it).

    The mask is binarised at the original resolution before letterboxing (the one rule, applied
    once). The original-resolution ground truth is not carried in items; evaluation loads it with
    `masks.load_binary_mask` so training batches stay small. Records should come out of
    `validate.apply_bad_sample_policy`; a mask whose size differs from its image still fails here.
    """

    def __init__(self, records: list[Record], data_root: str | os.PathLike, image_size: int, mask_rule: MaskRule = MaskRule()):
        self.records = list(records)
        self.data_root = Path(data_root)
        self.image_size = image_size
        self.mask_rule = mask_rule

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        with Image.open(self.data_root / rec.image_path) as img:
            image, lb = letterbox_image(img, self.image_size)
        if rec.label == 0:
            mask = torch.zeros(self.image_size, self.image_size, dtype=torch.float32)
        else:
            binary = load_binary_mask(rec, self.data_root, self.mask_rule)
            if binary.shape != (lb.orig_h, lb.orig_w):
                raise ValueError(
                    f"record {rec.index} ({rec.image_path}): mask {rec.mask_path} is {binary.shape[0]}x{binary.shape[1]} "
                    f"but the image is {lb.orig_h}x{lb.orig_w}; run check_data.py and fix or skip it."
                )
            mask = torch.from_numpy(letterbox_mask(binary, lb))
        return {"image": image, "mask": mask, "label": rec.label, "letterbox": lb, "record": rec, "position": i}



def model_image(img: Image.Image, image_size: int | None) -> Image.Image:
    """The RGB picture the processor receives: letterboxed to ``image_size``, or the original image
    when ``image_size`` is None (the processor then resizes within its pixel bounds)."""
    if image_size is None:
        return img.convert("RGB")
    return letterbox_image(img, image_size)[0]


class ImageFileDataset(Dataset):
    """Unlabelled image files (``predict.py``): items ``{"image", "position"}`` with the image prepared
    by :func:`model_image`, exactly as the evaluation datasets prepare theirs. Check the files first
    (``validate.inspect_image``): a file that fails to decode here raises."""

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int | None):
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        with Image.open(self.paths[i]) as img:
            return {"image": model_image(img, self.image_size), "position": i}
