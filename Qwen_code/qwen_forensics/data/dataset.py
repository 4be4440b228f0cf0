"""Torch datasets: validated records (letterboxed image and training mask per item) and unlabelled
image files (prediction)."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from qwen_forensics.data.collate import IMDLBENCO_TRUTH_KEY, SIZE_KEY, THUMB_KEY, TRUTH_KEY
from qwen_forensics.data.geometry import letterbox_image, letterbox_mask
from qwen_forensics.data.lm_records import Task2Sample
from qwen_forensics.data.masks import MaskRule, load_binary_mask, load_fake_truths
from qwen_forensics.data.perturb import Perturbation, perturb_image
from qwen_forensics.data.records import Record


class ForgeryDataset(Dataset):
    """Items are dicts: ``image`` (letterboxed PIL RGB, ``image_size`` square), ``mask`` (float32
    tensor [image_size, image_size]: the binarised mask, letterboxed with area weighting), ``label``,
    ``letterbox`` (the geometry, for mapping predictions back), ``record`` and ``position`` (the item's
index in ``records``: distributed evaluation orders gathered outputs by it).

    The mask is binarised at the original resolution before letterboxing (the one rule, applied
    once). Records should come out of `validate.apply_bad_sample_policy`; a mask whose size differs
    from its image still fails here. ``with_mask=False`` (evaluations) leaves the training ``mask``
    out. ``with_truth=True`` (evaluations with heatmaps) adds the original-resolution ground truth
    the loop scores against on the accelerator (``collate.TRUTH_KEY``: bool [H, W], None for a
    real; ``collate.SIZE_KEY``: (H, W)), decoded here in the loader workers, and the same mask binarised
    as IMDLBenCo does for its convention's columns (``collate.IMDLBENCO_TRUTH_KEY``, from the same decode).

    ``perturbation`` (``data.perturb``): applied to the decoded image at its original resolution, before
    the letterbox, seeded by ``perturb_seed`` and the image's pixels. Only ``resize`` changes the ground
    truth (resized with nearest neighbour; ``SIZE_KEY`` is then the resized size, where it is scored).
    """

    def __init__(self, records: list[Record], data_root: str | os.PathLike, image_size: int,
                 mask_rule: MaskRule = MaskRule(), *, with_mask: bool = True, with_truth: bool = False,
                 perturbation: Perturbation | None = None, perturb_seed: int = 0):
        self.records = list(records)
        self.data_root = Path(data_root)
        self.image_size = image_size
        self.mask_rule = mask_rule
        self.with_mask = with_mask
        self.with_truth = with_truth
        self.perturbation = perturbation
        self.perturb_seed = perturb_seed

    def _binary_masks(self, rec: Record, height: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The fake's binarised mask, and with ``with_truth`` IMDLBenCo's binarisation of it (else None)."""
        if self.with_truth:
            binary, imdlbenco = load_fake_truths(rec, self.data_root, self.mask_rule)
        else:
            binary, imdlbenco = load_binary_mask(rec, self.data_root, self.mask_rule), None
        if binary.shape != (height, width):
            raise ValueError(
                f"record {rec.index} ({rec.image_path}): mask {rec.mask_path} is {binary.shape[0]}x{binary.shape[1]} "
                f"but the image is {height}x{width}; run check_data.py and fix or skip it."
            )
        if self.perturbation is not None:
            binary = self.perturbation.mask(binary)
            imdlbenco = self.perturbation.mask(imdlbenco)
        return binary, imdlbenco

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        with Image.open(self.data_root / rec.image_path) as img:
            height, width = img.height, img.width
            shown = img if self.perturbation is None else perturb_image(img, self.perturbation, self.perturb_seed)
            image, lb = letterbox_image(shown, self.image_size)
        item = {"image": image, "label": rec.label, "letterbox": lb, "record": rec, "position": i}
        binary, imdlbenco = (self._binary_masks(rec, height, width)
                             if rec.label == 1 and (self.with_mask or self.with_truth) else (None, None))
        if self.with_truth:
            item[TRUTH_KEY], item[IMDLBENCO_TRUTH_KEY], item[SIZE_KEY] = binary, imdlbenco, (lb.orig_h, lb.orig_w)
        if self.with_mask:
            item["mask"] = (torch.zeros(self.image_size, self.image_size, dtype=torch.float32) if binary is None
                            else torch.from_numpy(letterbox_mask(binary, lb)))
        return item


def model_image(img: Image.Image, image_size: int | None, perturbation: Perturbation | None = None,
                perturb_seed: int = 0) -> Image.Image:
    """The RGB picture the processor receives: ``perturbation`` (if any) applied at the original
    resolution, then letterboxed to ``image_size``, or as it is when ``image_size`` is None (the processor
    then resizes within its pixel bounds)."""
    img = perturb_image(img, perturbation, perturb_seed)
    if image_size is None:
        return img
    return letterbox_image(img, image_size)[0]


class ImageFileDataset(Dataset):
    """Unlabelled image files (``predict.py``): items ``{"image", "position"}`` with the image prepared
    by :func:`model_image`, exactly as the evaluation datasets prepare theirs. Check the files first
    (``validate.inspect_image``): a file that fails to decode here raises. With ``thumbnail_side``
    items also carry the original size (``collate.SIZE_KEY``) and a copy of the image at most that
    many pixels on its long side (``collate.THUMB_KEY``, uint8 [h, w, 3]) for the overlay picture.
    ``perturbation`` (``data.perturb``) is applied first, at the original resolution; the thumbnail and
    the size are then the perturbed image's."""

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int | None, thumbnail_side: int | None = None,
                 perturbation: Perturbation | None = None, perturb_seed: int = 0):
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size
        self.thumbnail_side = thumbnail_side
        self.perturbation = perturbation
        self.perturb_seed = perturb_seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        with Image.open(self.paths[i]) as opened:
            img = perturb_image(opened, self.perturbation, self.perturb_seed)
            item = {"image": model_image(img, self.image_size), "position": i}
            if self.thumbnail_side:
                item[SIZE_KEY] = (img.height, img.width)
                thumb = img.copy()
                thumb.thumbnail((self.thumbnail_side, self.thumbnail_side), Image.BILINEAR)
                item[THUMB_KEY] = np.array(thumb, dtype=np.uint8)
            return item


@dataclass(frozen=True)
class ImageEntry:
    """What the image dataset needs per item; ``file_size``/``sha256`` (when known) are verified."""
    image_path: str
    label: int
    file_size: int | None = None
    sha256: str | None = None


class Task2ImageDataset(Dataset):
    """Items ``{"image": PIL RGB, "label", "position"}``: letterboxed to ``image_size``, or the
    original image when ``image_size`` is None (the processor then resizes within its pixel bounds).

    The file is read once; when the entry carries a digest it is checked on those bytes, so a
    training image replaced after map.py is an error instead of a silent label mismatch.
    ``perturbation`` (``data.perturb``) is applied to the decoded image before the letterbox.
    """

    def __init__(self, entries: Sequence[ImageEntry], data_root: str | os.PathLike, image_size: int | None,
                 perturbation: Perturbation | None = None, perturb_seed: int = 0):
        self.entries = list(entries)
        self.data_root = Path(data_root)
        self.image_size = image_size
        self.perturbation = perturbation
        self.perturb_seed = perturb_seed

    @classmethod
    def from_records(cls, records: Sequence[Record], data_root, image_size, perturbation: Perturbation | None = None,
                     perturb_seed: int = 0) -> "Task2ImageDataset":
        """Index records, read as they are (no digest to check)."""
        return cls([ImageEntry(r.image_path, r.label) for r in records], data_root, image_size, perturbation,
                   perturb_seed)

    @classmethod
    def from_samples(cls, samples: Sequence[Task2Sample], data_root, image_size) -> "Task2ImageDataset":
        return cls([ImageEntry(s.image_path, s.label, s.file_size, s.sha256) for s in samples], data_root, image_size)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        entry = self.entries[i]
        path = self.data_root / entry.image_path
        data = path.read_bytes()
        changed = entry.sha256 is not None and (len(data) != entry.file_size
                                                or hashlib.sha256(data).hexdigest() != entry.sha256)
        if changed:
            raise ValueError(f"{path} changed after map.py recorded it (size or SHA-256 differ); rerun map.py so "
                             "the training set matches the images")
        with Image.open(io.BytesIO(data)) as img:
            image = model_image(img, self.image_size, self.perturbation, self.perturb_seed)
        return {"image": image, "label": entry.label, "position": i}
