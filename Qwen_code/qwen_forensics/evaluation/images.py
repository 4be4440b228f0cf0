"""Prediction on arbitrary image files with any trained checkpoint (``Qwen_code/predict.py``).

Three steps, each reusing what the evaluation scripts use:

1. ``checkpoints.detect_checkpoint``: which task wrote a folder, from the files in it, and what the
   training recorded (base model, image size, prompt); nothing needs repeating on the command line.
2. :func:`collect_images`: the inputs (files and folders) checked with ``validate.inspect_image``;
   unreadable, truncated and non-image files are listed with the reason, never dropped silently.
3. :class:`ImagePredictor`: the task's own collators and batched scorers (:class:`CheckpointRunner`:
   ``evaluation.predict_heads``, ``evaluation.score_answers``, ``evaluation.predict_hybrid``; the model
   loaded once, as ``benchmark_sets.py`` uses it too) over ``data.dataset.ImageFileDataset``
   (letterboxed to the checkpoint's ``image_size`` as in evaluation), one pass per condition
   (``--perturb``: the clean images, then each perturbation of ``data.perturb``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from qwen_forensics.checkpoints.adapters import load_adapter_strict
from qwen_forensics.checkpoints.detect import TASK1, TASK2, TASK3, Checkpoint
from qwen_forensics.checkpoints.task1 import attach_task1_checkpoint
from qwen_forensics.checkpoints.task2 import adapter_setup
from qwen_forensics.checkpoints.task3 import answer_ids_for, load_hybrid_model, read_hybrid_spec
from qwen_forensics.config.dtypes import precision
from qwen_forensics.data.collate import SIZE_KEY, THUMB_KEY, HybridCollator, ImageBatchCollator, make_collator
from qwen_forensics.data.dataset import ImageFileDataset
from qwen_forensics.data.formats import IMAGE_SUFFIXES
from qwen_forensics.data.geometry import letterbox_geometry, unletterbox_stack
from qwen_forensics.data.perturb import CLEAN_NAME, Perturbation, level_text, resized_size
from qwen_forensics.data.validate import inspect_image
from qwen_forensics.files import BackgroundWriter
from qwen_forensics.evaluation.predictions import predict_heads, predict_hybrid, score_answers
from qwen_forensics.evaluation.scoring import PixelCounter
from qwen_forensics.model.loader import load_model, load_processor, load_vision_tower
from qwen_forensics.prompts import answer_token_ids
from qwen_forensics.report.gallery import (ENLARGED_WARNING, INDEX_HTML, PREVIEWS_DIR, write_prediction_index,
                                           write_preview)
from qwen_forensics.report.pictures import save_overlay_jpeg, save_probability_map


# --------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


@dataclass
class ImageScan:
    """The inputs sorted out: readable images (with their size), bad files (with the reason) and
    folder entries skipped for their name (no image extension)."""
    images: list[Path] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)


def collect_images(inputs: Sequence[str | os.PathLike], *, recursive: bool = False,
                   exclude: Path | None = None) -> ImageScan:
    """Files as given (whatever their name) and the image-named files of folders (``IMAGE_SUFFIXES``,
    any case; ``recursive`` descends), each decoded once to check it; ``exclude`` (the output folder)
    is never scanned. Duplicates are predicted once."""
    scan = ImageScan()
    candidates: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            entries = sorted(path.rglob("*") if recursive else path.iterdir())
            for entry in entries:
                if not entry.is_file() or (exclude is not None and exclude.resolve() in entry.resolve().parents):
                    continue
                (candidates if entry.suffix.lower() in IMAGE_SUFFIXES else scan.ignored).append(entry)
        else:
            candidates.append(path)
    for path in dict.fromkeys(candidates):
        size, failure, detail = inspect_image(path)
        if failure is None:
            scan.images.append(path)
            scan.sizes.append(size)
        else:
            scan.bad.append(BadFile(str(path), f"{failure}: {detail}"))
    return scan


# --------------------------------------------------------------------------------------- prediction
@dataclass
class Predictions:
    """Per-image outputs in input order; a field is None when the checkpoint has no such part."""
    p_fake_head: np.ndarray | None = None
    heatmaps: np.ndarray | None = None         # [N, h, w] patch-grid probabilities on the letterboxed canvas
    p_fake_lm: np.ndarray | None = None
    answers: list[str] | None = None           # the LM's greedy free text
    started: float = 0.0                       # time.perf_counter() when the prediction loop began
    seconds: float = 0.0                       # the prediction loop alone
    perturbation: Perturbation | None = None   # the condition of this pass (None: the images as they are)


class CheckpointRunner:
    """A detected checkpoint (``checkpoints.detect_checkpoint``) ready to predict with its own parts (heads,
    LM answer or both): its processor and collator come first, before any weights (the processor checks
    the image size against the model); :meth:`load` loads the model once, in bfloat16 on a GPU
    (``config.precision``); then :meth:`predict` runs the loop of the evaluation script of that task over
    any number of loaders (``predict.py``, ``benchmark_sets.py``)."""

    def __init__(self, ckpt: Checkpoint, model_path: str, accelerator, *, fast_paths: bool = True):
        self.ckpt, self.model_path, self.accelerator, self.fast_paths = ckpt, model_path, accelerator, fast_paths
        self.run_in = precision("bfloat16", accelerator.device)
        self.processor = load_processor(model_path, ckpt.image_size)
        self.model = None
        self.answer_ids: tuple[int, int] | None = None
        if ckpt.kind == TASK2:
            self.setup = adapter_setup(ckpt.folder)
            self.answer_ids = answer_token_ids(self.processor, self.setup.fake_word, self.setup.real_word)
        elif ckpt.kind == TASK3:
            self.spec = read_hybrid_spec(ckpt.task3.fusion_file)
            self.answer_ids = answer_ids_for(self.processor, self.spec)

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The P(fake) columns the checkpoint's evaluation script reports (thresholds are tuned per column)."""
        return ("p_fake_lm", "p_fake_head") if self.ckpt.kind == TASK3 else ("p_fake",)

    def collator(self):
        """What the loaders collate with: the collator of the task's evaluation script."""
        if self.ckpt.kind == TASK1:
            return ImageBatchCollator(self.processor)
        if self.ckpt.kind == TASK2:
            return make_collator(self.processor, self.setup, train=False)
        return HybridCollator(self.processor, self.spec.hybrid_prompt(self.processor))

    def load(self) -> None:
        """Load the base model with the checkpoint's parts attached, strictly (once)."""
        weights = self.run_in.weights
        if self.ckpt.kind == TASK1:
            tower = load_vision_tower(self.model_path, dtype=weights, fast_paths=self.fast_paths)
            self.model = self.accelerator.prepare(attach_task1_checkpoint(tower, self.ckpt.folder))
            return
        base = load_model(self.model_path, dtype=weights, device=self.accelerator.device, fast_paths=self.fast_paths)
        if self.ckpt.kind == TASK2:
            base.requires_grad_(False)
            load_adapter_strict(base, self.ckpt.folder)
            self.model = base
        else:
            self.model = load_hybrid_model(base, self.processor, self.ckpt.task3)[0]

    def predict(self, loader, num_records: int, *, counter: PixelCounter | None = None, on_batch=None,
                max_new_tokens: int = 0):
        """One pass over ``loader``: ``HeadPredictions`` (Task 1), ``AnswerScores`` (Task 2) or
        ``HybridPredictions`` (Task 3), every record once, in order. With heads, ``counter`` scores each
        batch's heatmaps at the original resolution and ``on_batch(batch, heatmaps)`` sees each batch;
        with an LM, ``max_new_tokens`` of greedy text come too."""
        if self.ckpt.kind == TASK1:
            return predict_heads(self.model, loader, self.accelerator, self.run_in.autocast, num_records, counter,
                                 on_batch)
        if self.ckpt.kind == TASK2:
            fake_id, real_id = self.answer_ids
            return score_answers(self.model, loader, self.accelerator, fake_token_id=fake_id, real_token_id=real_id,
                                 num_records=num_records, max_new_tokens=max_new_tokens,
                                 tokenizer=self.processor.tokenizer)
        return predict_hybrid(self.model, loader, self.accelerator, self.answer_ids, self.run_in.autocast,
                              num_records, max_new_tokens=max_new_tokens, tokenizer=self.processor.tokenizer,
                              counter=counter, on_batch=on_batch)


class ImagePredictor:
    """A checkpoint's own parts (:class:`CheckpointRunner`) over image files, the model loaded once for any
    number of passes (``predict.py``'s conditions, the app's requests): :meth:`passes` scores a list of
    files once per condition, with ``num_workers`` loader processes decoding, perturbing and letterboxing
    them meanwhile (the next condition's loader starts while the current pass runs); ``fast_paths``
    False runs plain transformers."""

    def __init__(self, ckpt: Checkpoint, model_path: str, accelerator, *, batch_size: int, max_new_tokens: int,
                 num_workers: int = 0, fast_paths: bool = True):
        self.ckpt, self.accelerator = ckpt, accelerator
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_new_tokens = max_new_tokens if ckpt.has_lm else 0
        self.runner = CheckpointRunner(ckpt, model_path, accelerator, fast_paths=fast_paths)
        self.collate = self.runner.collator()

    def load(self) -> None:
        """Load the model (once; later calls do nothing)."""
        if self.runner.model is None:
            self.runner.load()

    def _loader(self, images: Sequence[Path], perturbation: Perturbation | None, perturb_seed: int):
        dataset = ImageFileDataset(images, self.ckpt.image_size, OVERLAY_SIDE if self.ckpt.has_heads else None,
                                   perturbation, perturb_seed)
        return self.accelerator.prepare(DataLoader(dataset, batch_size=self.batch_size, collate_fn=self.collate,
                                                   pin_memory=self.accelerator.device.type == "cuda",
                                                   num_workers=self.num_workers))

    def passes(self, images: Sequence[Path], conditions: Sequence[Perturbation | None] = (None,), *,
               perturb_seed: int = 0, on_batch=None):
        """Yield one :class:`Predictions` per condition, in order (None: the images as they are).
        ``on_batch(condition)`` returns the hook that sees each batch of that pass of a checkpoint with
        heads (``HeatmapFiles.on_batch``: its pictures are written meanwhile), or None."""
        loaders = [self._loader(images, condition, perturb_seed) for condition in conditions]
        # The first pass's workers decode while the weights load; each later one's while the pass before runs.
        running = iter(loaders[0]) if loaders else None
        self.load()
        for k, condition in enumerate(conditions):
            current, running = running, iter(loaders[k + 1]) if k + 1 < len(loaders) else None
            started = time.perf_counter()
            got = self.runner.predict(current, len(images), on_batch=on_batch(condition) if on_batch else None,
                                      max_new_tokens=self.max_new_tokens)
            yield self._predictions(got, started, time.perf_counter() - started, condition)

    def _predictions(self, got, started: float, seconds: float, condition: Perturbation | None) -> Predictions:
        timing = {"started": started, "seconds": seconds, "perturbation": condition}
        if self.ckpt.kind == TASK1:
            return Predictions(p_fake_head=got.p_fake, heatmaps=got.heatmaps, **timing)
        if self.ckpt.kind == TASK2:
            return Predictions(p_fake_lm=got.p_fake, answers=got.generated, **timing)
        return Predictions(p_fake_head=got.p_fake_head, heatmaps=got.heatmaps, p_fake_lm=got.p_fake_lm,
                           answers=got.generated, **timing)


OVERLAY_SIDE = 1024  # the overlay picture's long side at most, in pixels (never upscaled)


class HeatmapFiles:
    """predict.py's pictures of each image: the heatmap at the original resolution (grey PNG) and an
    overlay on a copy of the image at most :data:`OVERLAY_SIDE` pixels wide (JPEG). Both are computed
    on the accelerator as each batch comes out of the model (``on_batch``: the inverse letterbox of the
    batch's images of one size at once, the grey levels, the overlay's heatmap at the thumbnail's size)
    and encoded on background threads, so the loop never waits for an encoder. A perturbed pass's files
    end in ``_<kind>-<level>`` (``00003_frame_jpeg-50.png``)."""

    def __init__(self, out_dir: Path, scan: ImageScan, image_size: int, perturbation: Perturbation | None = None):
        self.out_dir, self.scan, self.image_size = out_dir, scan, image_size
        self.writer = BackgroundWriter()
        suffix = "" if perturbation is None else f"_{perturbation.kind}-{level_text(perturbation.level)}"
        self.stems = [f"{k:05d}_{path.stem}{suffix}" for k, path in enumerate(scan.images)]

    def paths(self, k: int) -> tuple[Path, Path]:
        return (self.out_dir / HEATMAPS_DIR / f"{self.stems[k]}.png",
                self.out_dir / OVERLAYS_DIR / f"{self.stems[k]}.jpg")

    def _write(self, k: int, levels: np.ndarray, thumbnail: np.ndarray, small: np.ndarray) -> None:
        heat_path, overlay_path = self.paths(k)
        save_probability_map(levels, heat_path)
        save_overlay_jpeg(thumbnail, small, overlay_path)

    def on_batch(self, batch, heatmaps: torch.Tensor) -> None:
        thumbnails = batch[THUMB_KEY]
        for i, position, prob, levels in original_size_maps(batch, heatmaps, self.image_size):
            thumbnail = thumbnails[i]
            small = F.interpolate(prob[None, None], size=tuple(thumbnail.shape[:2]), mode="bilinear",
                                  align_corners=False)[0, 0]
            self.writer.submit(self._write, position, levels, thumbnail.cpu().numpy(), small.cpu().numpy())


def original_size_maps(batch, heatmaps: torch.Tensor, image_size: int):
    """Each image of a batch's heatmap at its original resolution, on the heatmaps' device: yields (index in the
    batch, dataset position, probabilities [H, W] in [0, 1], their 8-bit grey levels as a host array), the
    batch's images of one size mapped back at once (``data.geometry.unletterbox_stack``)."""
    positions, sizes = batch["position"].tolist(), batch[SIZE_KEY].tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    for (h, w), members in groups.items():
        prob = unletterbox_stack(heatmaps[members].float(), letterbox_geometry(h, w, image_size)).clamp(0, 1)
        levels = (prob * 255).round().to(torch.uint8).cpu().numpy()
        for j, i in enumerate(members):
            yield i, positions[i], prob[j], levels[j]


# --------------------------------------------------------------------------------------- outputs
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
SKIPPED_JSON = "skipped.json"
RUN_JSON = "run.json"
HEATMAPS_DIR = "heatmaps"
OVERLAYS_DIR = "overlays"
# Everything predict.py writes into its output folder (``runs``).
PREDICT_OUTPUTS = (PREDICTIONS_CSV, PREDICTIONS_JSON, SKIPPED_JSON, RUN_JSON, HEATMAPS_DIR, OVERLAYS_DIR, PREVIEWS_DIR,
                   INDEX_HTML)


def primary_score(ckpt: Checkpoint) -> str:
    """The column ``p_fake`` copies: the LM's answer where there is one (the Task 3 evaluation's
    ``score`` uses it too), else the heads'."""
    return "p_fake_lm" if ckpt.has_lm else "p_fake_head"


def image_rows(ckpt: Checkpoint, scan: ImageScan, preds: Predictions, *, threshold: float,
               heatmap_files: HeatmapFiles | None = None, conditions: bool = False) -> list[dict]:
    """One pass's rows, one per image in input order (see :func:`write_predictions`); with ``conditions``
    each row names its pass's ``perturbation`` (``none`` for the images as they are) and ``level``, and
    ``height`` / ``width`` are the perturbed image's (a resize changes them). Picture paths are relative to
    the folder ``heatmap_files`` writes into."""
    rows = []
    condition = preds.perturbation
    for k, (path, (height, width)) in enumerate(zip(scan.images, scan.sizes)):
        row: dict = {"image": str(path.resolve())}
        if conditions:
            row["perturbation"] = CLEAN_NAME if condition is None else condition.kind
            row["level"] = "" if condition is None else level_text(condition.level)
            if condition is not None and condition.kind == "resize":
                height, width = resized_size(height, width, condition.level)
        row.update(height=height, width=width)
        if ckpt.image_size:
            row["letterbox_scale"] = round(ckpt.image_size / max(height, width), 4)
        if preds.p_fake_head is not None:
            row["p_fake_head"] = float(preds.p_fake_head[k])
        if preds.p_fake_lm is not None:
            row["p_fake_lm"] = float(preds.p_fake_lm[k])
        row["p_fake"] = row[primary_score(ckpt)]
        row["verdict"] = "fake" if row["p_fake"] >= threshold else "real"
        if preds.answers is not None:
            row["answer_text"] = preds.answers[k]
        if preds.heatmaps is not None and heatmap_files is not None:
            heat_path, overlay_path = heatmap_files.paths(k)
            row["heatmap_png"] = heat_path.relative_to(heatmap_files.out_dir).as_posix()
            row["overlay_jpg"] = overlay_path.relative_to(heatmap_files.out_dir).as_posix()
        rows.append(row)
    return rows


def write_predictions(out_dir: Path, ckpt: Checkpoint, scan: ImageScan, passes: Sequence[Predictions], *,
                      threshold: float, heatmap_files: Sequence[HeatmapFiles | None] = (),
                      conditions: bool = False) -> list[dict]:
    """The rows of every pass (CSV and JSON: pass by pass, input order within each), the heatmap and overlay
    PNGs at each image's original resolution (``heatmap_files``, one per pass, wrote them during the loop;
    waited for here), and ``skipped.json``; returns the rows.

    Row keys: ``image`` (absolute path), with ``conditions`` (``--perturb``) ``perturbation`` and ``level``,
    then ``height``, ``width``, ``letterbox_scale`` (the factor the image was resized by to the checkpoint's
    ``image_size``; absent at native size), then what the checkpoint has: ``p_fake_head``, ``p_fake_lm``;
    always ``p_fake`` (:func:`primary_score`) and ``verdict`` ("fake" when ``p_fake >= threshold``);
    ``answer_text`` (the LM's greedy words) and ``heatmap_png`` / ``overlay_jpg`` (paths relative to
    ``out_dir``) where they exist. Paths never depend on the folder the command ran in.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list(heatmap_files) or [None] * len(passes)
    rows = []
    for preds, pictures in zip(passes, files):
        if pictures is not None:
            pictures.writer.close()
        rows += image_rows(ckpt, scan, preds, threshold=threshold, heatmap_files=pictures, conditions=conditions)
    with (out_dir / PREDICTIONS_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / PREDICTIONS_JSON).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    skipped = {"bad": [asdict(b) for b in scan.bad], "ignored_not_image_names": [str(p) for p in scan.ignored]}
    (out_dir / SKIPPED_JSON).write_text(json.dumps(skipped, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return rows


def enlarged_images(rows: Sequence[dict]) -> list[dict]:
    """Rows whose image was enlarged more than :data:`ENLARGED_WARNING` times to fill the letterbox."""
    return [row for row in rows if row.get("letterbox_scale", 0) > ENLARGED_WARNING]


def write_prediction_gallery(out_dir: Path, rows: Sequence[dict], scan: ImageScan, ckpt: Checkpoint, *,
                             threshold: float) -> Path:
    """``index.html`` (``report.gallery``) with a preview of every image in ``previews/``, written on
    background threads."""
    writer = BackgroundWriter()
    # One preview per image: the rows of --perturb passes show the same original.
    names: dict[str, str] = {}
    for row in rows:
        if row["image"] not in names:
            names[row["image"]] = f"{PREVIEWS_DIR}/{len(names):05d}_{Path(row['image']).stem}.jpg"
            writer.submit(write_preview, row["image"], out_dir / names[row["image"]])
    writer.close()
    previews = [names[row["image"]] for row in rows]
    skipped = [asdict(b) for b in scan.bad] + [{"path": str(p), "reason": "no image extension"} for p in scan.ignored]
    description = [f"checkpoint: {ckpt.kind} at {ckpt.folder}",
                   f"{len(rows)} images; verdict fake when {primary_score(ckpt)} >= {threshold}",
                   f"files beside this page: {PREDICTIONS_CSV} (one row per image), {HEATMAPS_DIR}/ (full-resolution "
                   f"heatmaps, grey 0-255 = P 0-1), {OVERLAYS_DIR}/, {SKIPPED_JSON}"]
    return write_prediction_index(out_dir, rows, skipped, title="Predictions", description=description,
                                  previews=previews)
