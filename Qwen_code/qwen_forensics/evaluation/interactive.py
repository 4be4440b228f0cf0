"""What ``Qwen_code/app.py`` (the local web app) computes, without the web framework: the checkpoint's card
for the page header, and predictions on uploaded files through ``predict.py``'s own code path
(:class:`~qwen_forensics.evaluation.images.ImagePredictor`, ``image_rows``), plus each image (perturbed when
asked) and its heatmap at the original resolution, kept so that moving a slider (threshold, opacity)
redraws the verdict, overlay and mask from them without touching the model (:func:`verdict`,
:func:`overlay`, :func:`binary_mask`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from qwen_forensics.checkpoints.detect import Checkpoint
from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME
from qwen_forensics.data.perturb import Perturbation, perturb_image
from qwen_forensics.evaluation.images import ImagePredictor, collect_images, image_rows, original_size_maps
from qwen_forensics.report.page import metric_direction
from qwen_forensics.report.pictures import overlay_array

DEFAULT_THRESHOLD = 0.5
# The training configs' keys naming the set a checkpoint was trained on, by task script.
TRAINED_ON_KEYS = ("ann_train", "train_dataset_path", "annotation_file")


@dataclass(frozen=True)
class CheckpointCard:
    """What the page header says about the loaded checkpoint."""
    kind: str
    folder: str
    model: str
    image_size: int | None
    trained_on: str | None
    validation: dict[str, float]    # the last validation metrics of the training log (val_* columns)
    threshold: float | None         # a tuned threshold recorded with the checkpoint (None: none)

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    def facts(self) -> dict[str, Any]:
        return {"task": self.kind, "checkpoint": self.folder, "base model": self.model,
                "image size": self.image_size or "native", "trained on": self.trained_on or "not recorded",
                **({f"validation {k}": round(v, 4) for k, v in self.validation.items()}
                   or {"validation": "none logged"}),
                "tuned threshold": (f"{self.threshold:.4f}" if self.threshold is not None
                                    else f"none recorded (slider starts at {DEFAULT_THRESHOLD})")}


def _recorded_config(folder: Path) -> tuple[dict, Path] | tuple[None, None]:
    """The training config recorded with a checkpoint: in its folder or the training output folder above it."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        path = candidate / RESOLVED_CONFIG_NAME
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), candidate
            except (OSError, json.JSONDecodeError):
                return None, None
    return None, None


def _last_validation(log: Path) -> dict[str, float]:
    """The validation metrics (``val_<metric>`` columns, a quality metric or the tuned ``threshold``) of the last
    training-log row that has any finite one."""
    try:
        with log.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    for row in reversed(rows):
        values = {}
        for key, text in row.items():
            name = (key or "").removeprefix("val_")
            if key and key.startswith("val_") and (metric_direction(name) or name == "threshold"):
                try:
                    number = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    values[name] = number
        if values:
            return values
    return {}


def checkpoint_card(ckpt: Checkpoint, model_path: str) -> CheckpointCard:
    """The header facts of a detected checkpoint: its training's recorded config (trained-on set, training log)
    and the log's last validation metrics; a tuned threshold when the log records one (``val_threshold``; no
    training writes one today, so the app's slider starts at 0.5)."""
    config, where = _recorded_config(Path(ckpt.folder))
    trained_on, validation = None, {}
    if config is not None:
        trained_on = next((str(config[k]) for k in TRAINED_ON_KEYS if config.get(k)), None)
        log = config.get("train_log")
        if log:
            recorded = Path(log) if Path(log).is_absolute() else where / log
            # A training folder moved since keeps its log beside the checkpoint or in the output folder above it.
            found = next((p for p in (recorded, where / recorded.name, where.parent / recorded.name) if p.is_file()),
                         None)
            validation = _last_validation(found) if found else {}
    threshold = validation.pop("threshold", None)
    return CheckpointCard(ckpt.kind, str(ckpt.folder), model_path, ckpt.image_size, trained_on, validation, threshold)


@dataclass
class ImageResult:
    """One uploaded file's answer: ``row`` as predict.py writes it (without the picture paths), the image the
    model saw at its original resolution (perturbed when asked) and the heatmap's 8-bit grey levels at that
    size (None without heads), or ``error`` (why the file is not a readable image)."""
    name: str
    row: dict[str, Any] = field(default_factory=dict)
    rgb: np.ndarray | None = None
    heat: np.ndarray | None = None
    error: str | None = None


class InteractivePredictor:
    """A checkpoint loaded once (:meth:`load`) answering batches of uploaded files: :meth:`predict` runs
    predict.py's loop over them (one forward per ``batch_size`` images) and returns an :class:`ImageResult`
    per file, in order; a bad file gets its reason and the others are still predicted."""

    def __init__(self, ckpt: Checkpoint, model_path: str, accelerator, *, batch_size: int = 8,
                 max_new_tokens: int = 4, fast_paths: bool = True):
        self.ckpt = ckpt
        self.card = checkpoint_card(ckpt, model_path)
        self.predictor = ImagePredictor(ckpt, model_path, accelerator, batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, num_workers=0, fast_paths=fast_paths)

    def load(self) -> None:
        self.predictor.load()

    def predict(self, paths: Sequence[str | Path], perturbation: Perturbation | None = None,
                perturb_seed: int = 0) -> list[ImageResult]:
        paths = [Path(p) for p in paths]
        scan = collect_images(paths)
        bad = {Path(b.path): b.reason for b in scan.bad}
        results = {path: ImageResult(path.name, error=f"{path.name}: not a readable image ({bad[path]})")
                   for path in bad}
        if scan.images:
            maps: dict[int, np.ndarray] = {}

            def keep(batch, heatmaps) -> None:
                for _, position, _, levels in original_size_maps(batch, heatmaps, self.ckpt.image_size):
                    maps[position] = levels

            preds = next(self.predictor.passes(scan.images, [perturbation], perturb_seed=perturb_seed,
                                               on_batch=lambda _: keep if self.ckpt.has_heads else None))
            rows = image_rows(self.ckpt, scan, preds, threshold=self.card.default_threshold,
                              conditions=perturbation is not None)
            for k, (path, row) in enumerate(zip(scan.images, rows)):
                with Image.open(path) as img:
                    rgb = np.asarray(perturb_image(img, perturbation, perturb_seed))
                results[path] = ImageResult(path.name, row, rgb, maps.get(k))
        return [results[path] for path in paths]


def verdict(row: dict[str, Any], threshold: float) -> str:
    """predict.py's verdict of a row at ``threshold``: "fake" when ``p_fake >= threshold``."""
    return "fake" if row["p_fake"] >= threshold else "real"


def overlay(result: ImageResult, opacity: float) -> np.ndarray | None:
    """The image with its heatmap's colours blended over it at ``opacity`` (original resolution)."""
    if result.heat is None:
        return None
    return overlay_array(result.rgb, result.heat.astype(np.float32) / 255, alpha=float(opacity))


def binary_mask(result: ImageResult, threshold: float) -> np.ndarray | None:
    """The heatmap thresholded (probability >= ``threshold``) as 0/255 uint8 at the original resolution."""
    if result.heat is None:
        return None
    return np.where(result.heat.astype(np.float32) / 255 >= threshold, 255, 0).astype(np.uint8)


def row_files(result: ImageResult, threshold: float, folder: Path) -> list[Path]:
    """The downloads of one result: its row as CSV and JSON (predict.py's columns, the verdict at
    ``threshold``) and, with a heatmap, the binary mask PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(result.name).stem
    row = {**result.row, "verdict": verdict(result.row, threshold)}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    files = [folder / f"{stem}.csv", folder / f"{stem}.json"]
    files[0].write_text(buffer.getvalue(), encoding="utf-8")
    files[1].write_text(json.dumps(row, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    mask = binary_mask(result, threshold)
    if mask is not None:
        files.append(folder / f"{stem}_mask.png")
        Image.fromarray(mask).save(files[-1])
    return files
