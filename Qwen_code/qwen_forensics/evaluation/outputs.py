"""The shared end of every evaluation script: predictions file, heatmap pictures, report, metrics CSV row.

``lora_eval.py``, ``full_model_eval.py``, ``lora_infer.py`` and ``hybrid_eval.py`` score differently
but finish the same way, through :func:`finish_evaluation`:

1. ``output_json``: the per-image rows as a JSON list (``indent=1``), the format the scripts always wrote;
2. ``<out_dir>/heatmaps/<position>_<stem>.png``: image | ground truth | overlay (the report gallery's
   picture), per ``save_heatmaps``: ``gallery`` (default) for the first ``num_heatmaps`` records, fakes
   first; ``all`` for every record; ``none`` for none (runs with heatmaps only). They are drawn on
   background threads while the loop runs (:class:`PictureWriter`);
3. ``<out_dir>/report.html``: the self-contained report (``report.write_report``): metrics, ROC/PR,
   confusion matrices at 0.5 and at the tuned threshold, per-method table and, with heatmaps, the
   mask-area table and the best/worst localisation gallery;
4. the metrics CSV row, appended last, so a row in the CSV means every file of the run was written.

Pixel scoring happens in the loop (``scoring.PixelCounter``); here a record's patch-grid map is mapped
back to its original resolution (``scoring.HeatmapSource``) only for the pictures.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME
from qwen_forensics.checkpoints.runs import Run, start_config_run
from qwen_forensics.checkpoints.tensors import write_resolved_config
from qwen_forensics.data.masks import MaskRule
from qwen_forensics.data.methods import read_method_names
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation.predictions import AnswerScores, SplitEvaluator
from qwen_forensics.evaluation.robustness import ROBUSTNESS_CSV
from qwen_forensics.evaluation.scoring import HeatmapSource
from qwen_forensics.files import BackgroundWriter, append_csv_row
from qwen_forensics.report.page import Example, GalleryItem, row_caption, write_report
from qwen_forensics.report.pictures import save_heatmap_panel
from qwen_forensics.report.tables import select_examples, select_false_alarms, select_gallery

REPORT_NAME = "report.html"
HEATMAP_DIR = "heatmaps"
GALLERY_SIZE = 4
EXAMPLES_PER_GROUP = 3  # thumbnails per group of the examples section
NO_HEATMAP_NOTE = "not available: this pipeline scores images by the language model's answer and makes no heatmap"


@dataclass(frozen=True)
class EvalOutputs:
    """Where a finished evaluation put its files."""
    predictions: Path
    csv: Path
    report: Path
    heatmap_pictures: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """The lines each script prints last."""
        lines = [f"metrics CSV: {self.csv}", f"predictions: {self.predictions}"]
        if self.heatmap_pictures:
            lines.append(f"heatmaps: {self.heatmap_pictures[0].parent} ({len(self.heatmap_pictures)} pictures)")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def write_predictions(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """The per-image rows as one JSON list (the predictions file of every evaluation script)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=1) + "\n", encoding="utf-8")
    return path


def pictured_positions(records: Sequence[Record], count: int) -> list[int]:
    """The records that get a heatmap picture: the first ``count``, fakes before reals, in index order."""
    return sorted(range(len(records)), key=lambda i: (-records[i].label, i))[:count]


SAVE_HEATMAPS = ("gallery", "all", "none")


class PictureWriter:
    """The ``heatmaps/`` pictures of an evaluated record list (``save_heatmaps``), drawn on the
    ``writer``'s threads: :meth:`on_batch` is called by the prediction loop with each batch's positions
    and heatmaps, so the pictures are written while the accelerator works; :meth:`finish` draws the ones
    no batch brought and returns every path, once all are written. Under several processes every process
    has one and ``writes(position)`` (``SplitEvaluator.writes``) says which pictures are its own; the
    main process's :meth:`finish` then draws none of the others'."""

    def __init__(self, records: Sequence[Record], data_root: str | os.PathLike, mask_rule: MaskRule, image_size: int,
                 out_dir: str | os.PathLike, mode: str, count: int, writes: Callable[[int], bool] | None = None):
        if mode not in SAVE_HEATMAPS:
            raise ValueError(f"save_heatmaps must be one of {list(SAVE_HEATMAPS)}, got {mode!r}")
        source = HeatmapSource(records, np.empty(0), Path(data_root), mask_rule, image_size)
        folder = Path(out_dir) / HEATMAP_DIR
        self.source, self.folder, self.writer = source, folder, BackgroundWriter()
        positions = {"all": range(len(source.records)), "gallery": pictured_positions(source.records, count),
                     "none": ()}[mode]
        self.wanted = {i: folder / f"{i:05d}_{Path(source.records[i].image_path).stem}.png" for i in positions}
        self.submitted: set[int] = set()
        self.writes = writes

    def _draw(self, i: int, heatmap: np.ndarray | None) -> Path:
        gt, prob_map = self.source.full_size(i, heatmap)
        return save_heatmap_panel(self.source.image_path(i), prob_map, gt, self.wanted[i])

    def on_batch(self, batch: Mapping, heatmaps: torch.Tensor) -> None:
        for k, i in enumerate(batch["position"].tolist()):
            if i in self.wanted and i not in self.submitted and (self.writes is None or self.writes(i)):
                self.submitted.add(i)
                self.writer.submit(self._draw, i, heatmaps[k].float().cpu().numpy())

    def finish(self, heatmaps: np.ndarray) -> list[Path]:
        """Draw the pictures no batch of this process brought (``heatmaps``: all records, gathered), except
        those another process writes, and return every path."""
        for i in sorted(i for i in set(self.wanted) - self.submitted if self.writes is None or self.writes(i)):
            self.submitted.add(i)
            self.writer.submit(self._draw, i, heatmaps[i])
        return [self.wanted[i] for i in sorted(self.wanted)]


def gallery(source: HeatmapSource, rows: Sequence[Mapping[str, Any]], score_columns: Sequence[str],
            writer: BackgroundWriter, k: int = GALLERY_SIZE,
            pixel_threshold: float = 0.5) -> tuple[list[GalleryItem], list[GalleryItem], list[GalleryItem]]:
    """The ``k`` best and ``k`` worst localisations by pixel IoU (``tables.select_gallery``) and the ``k``
    authentic images with the most pixels called forged (``tables.select_false_alarms``), each with its
    error map at ``pixel_threshold``; only those few heatmaps are mapped back to full size, on the
    ``writer``'s threads."""
    best, worst = select_gallery(rows, k)
    false_alarms = select_false_alarms(rows, k)

    def item(i: int) -> GalleryItem:
        gt, prob_map = source.full_size(i)
        caption = row_caption(rows[i], score_columns)
        if rows[i].get("label") == 0:
            caption += f" · pixels called forged {rows[i]['positive_fraction']:.4f}"
        return GalleryItem(source.image_path(i), gt, prob_map, caption, errors_at=pixel_threshold)

    futures = {i: writer.submit(item, i) for i in dict.fromkeys([*best, *worst, *false_alarms])}
    return ([futures[i].result() for i in best], [futures[i].result() for i in worst],
            [futures[i].result() for i in false_alarms])


def examples(rows: Sequence[Mapping[str, Any]], score_columns: Sequence[str], image_root: str | os.PathLike,
             k: int = EXAMPLES_PER_GROUP) -> list[Example]:
    """Thumbnails of the surest calls and the worst mistakes by the first score column at 0.5."""
    column = score_columns[0]
    chosen = select_examples(rows, column, 0.5, k)
    return [Example(Path(image_root) / str(rows[i]["image_path"]),
                    f"{os.path.basename(str(rows[i]['image_path']))} · {column} {float(rows[i][column]):.3f}", group)
            for group, positions in chosen.items() for i in positions]


def evaluation_outputs(output_json: str | os.PathLike, submission: str | os.PathLike | None = None) -> list[str]:
    """What an evaluation writes into its output folder (``runs``; the metrics CSV is appended, not listed),
    and its submission folder (``--export-submission``) wherever that is."""
    return [RESOLVED_CONFIG_NAME, str(output_json), HEATMAP_DIR, REPORT_NAME, ROBUSTNESS_CSV, "skipped_*",
            *([str(submission)] if submission else [])]


def start_evaluation_run(cfg: Any, script: str, evaluate: SplitEvaluator, accelerator, *,
                         submission: str | os.PathLike | None = None,
                         resolved: Mapping[str, Any] | None = None) -> Run:
    """Open an evaluation's run once every input is checked (``evaluate.start``, a submission's file names),
    so an index that stops the run leaves an earlier one untouched: the earlier evaluation in the output
    folder moves to ``previous_runs/`` (the metrics CSV, ``cfg.csv_path``, keeps every run's row), this run's
    resolved config is written (``resolved``: what to record; default the config) and its skipped records
    are listed."""
    run = start_config_run(cfg, script, evaluation_outputs(cfg.output_json, submission), appended=[cfg.csv_path],
                           accelerator=accelerator, say=accelerator.print)
    if accelerator.is_main_process:
        write_resolved_config(evaluate.out_dir, cfg if resolved is None else resolved)
    evaluate.write_skipped()
    return run


def each_batch(*hooks: Callable[[Mapping, torch.Tensor], None] | None) -> Callable[[Mapping, torch.Tensor], None]:
    """One ``on_batch`` hook of a prediction loop that calls each given one (None: absent) in turn."""
    present = [hook for hook in hooks if hook is not None]

    def on_batch(batch: Mapping, heatmaps: torch.Tensor) -> None:
        for hook in present:
            hook(batch, heatmaps)
    return on_batch


def finish_evaluation(*, run: Run, out_dir: str | os.PathLike, output_json: str | os.PathLike,
                      csv_path: str | os.PathLike,
                      csv_row: Mapping[str, Any], csv_columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
                      metrics: Mapping[str, Any], score_columns: Sequence[str],
                      thresholds: Mapping[str, float | None], title: str, description: Mapping[str, Any],
                      heatmaps: HeatmapSource | None = None, pictures: PictureWriter | None = None,
                      gallery_size: int = GALLERY_SIZE, pixel_threshold: float = 0.5,
                      image_root: str | os.PathLike | None = None,
                      extra_sections: Sequence[tuple[str, str]] = ()) -> EvalOutputs:
    """Write the predictions file, heatmap pictures, ``report.html`` and the CSV row (see the module doc).

    ``rows``: per-image dicts (``image_path``, ``label``, the ``score_columns``; with heatmaps also the
    pixel metrics and ``mask_area`` of ``scoring.score_heads``). ``pictures``: the writer the loop fed
    (runs with heatmaps); its threads also draw the gallery while the predictions file is written. ``csv_row`` is appended to
    ``csv_path`` with ``csv_columns`` leading (``files.append_csv_row``). ``thresholds``: the tuned
    threshold per score column, None without a validation index. ``metrics`` and ``description`` are
    the report's metrics table and run facts; both gain the ``run``'s id and config hash, and the
    report the number of skipped records (``num_skipped``). ``pixel_threshold``: the error maps' pixel
    rule. ``image_root``: the folder the rows' ``image_path`` is relative to, for the example
    thumbnails of runs without heatmaps (with heatmaps, theirs). ``extra_sections``: (heading, HTML)
    pairs the report appends (``robustness.RobustnessTable.section``). Main process only.
    """
    out_dir = Path(out_dir)
    csv_row = {**csv_row, **run.columns()}
    description = {**description, **run.columns()}
    if csv_row.get("num_skipped"):
        description["skipped records"] = (f"{csv_row['num_skipped']} (on_bad_sample: skip; listed with their reasons in "
                                          f"{out_dir}/skipped_*/skipped_records.json)")
    written: list[Path] = []
    best: list[GalleryItem] = []
    worst: list[GalleryItem] = []
    false_alarms: list[GalleryItem] = []
    if heatmaps is not None:
        writer = pictures.writer if pictures is not None else BackgroundWriter()
        if pictures is not None:
            written = pictures.finish(heatmaps.heatmaps)
        best, worst, false_alarms = gallery(heatmaps, rows, score_columns, writer, gallery_size, pixel_threshold)
        writer.close()
        image_root = heatmaps.data_root
    shown = examples(rows, score_columns, image_root) if image_root is not None else []
    names, names_note = read_method_names(image_root)
    predictions = write_predictions(output_json, rows)
    report = write_report(out_dir / REPORT_NAME, metrics=metrics, rows=rows, score_columns=score_columns,
                          thresholds=thresholds, title=title, description=description, gallery_best=best,
                          gallery_worst=worst, false_alarms=false_alarms, examples=shown,
                          pixel_note=None if heatmaps is not None else NO_HEATMAP_NOTE,
                          extra_sections=extra_sections, method_names=names, method_names_note=names_note)
    append_csv_row(csv_path, csv_row, csv_columns)
    return EvalOutputs(predictions=predictions, csv=Path(csv_path), report=report.path, heatmap_pictures=written)


def keyword_label(text: str, fake_word: str, real_word: str) -> int | None:
    """The label a free-text answer names: 1 if it contains only the fake word, 0 if only the real
    word (whole words, case-insensitive), None if it names both or neither."""
    def names(word: str) -> bool:
        return re.search(rf"\b{re.escape(word.strip())}\b", text, flags=re.IGNORECASE) is not None

    fake, real = names(fake_word), names(real_word)
    if fake == real:
        return None
    return 1 if fake else 0


def prediction_rows(records: Sequence, scores: AnswerScores, tuned_threshold: float | None, fake_word: str,
                    real_word: str) -> list[dict]:
    """Per-image output of an LM evaluation: probability, both logits, decisions, optional free text
    with its keyword label (its own column: it never replaces the probability-based decision)."""
    rows = []
    for i, rec in enumerate(records):
        row = {"image_path": rec.image_path, "label": rec.label, "p_fake": float(scores.p_fake[i]),
               "logit_fake": float(scores.logit_fake[i]), "logit_real": float(scores.logit_real[i]),
               "pred@0.5": int(scores.p_fake[i] >= 0.5)}
        if tuned_threshold is not None:
            row["pred@tuned"] = int(scores.p_fake[i] >= tuned_threshold)
        if scores.generated is not None:
            row["generated_text"] = scores.generated[i]
            row["generated_label"] = keyword_label(scores.generated[i], fake_word, real_word)
        rows.append(row)
    return rows


def generated_columns(rows: Sequence[dict]) -> dict[str, float]:
    """CSV columns for generated text: accuracy of its keyword label and how many named neither word."""
    if not rows or "generated_label" not in rows[0]:
        return {}
    named = [r["generated_label"] for r in rows]
    return {"generated_acc": sum(g == r["label"] for g, r in zip(named, rows)) / len(rows),
            "generated_undecided": sum(g is None for g in named)}
