"""Many test sets, one checkpoint, the model loaded once: the field's benchmark table (``benchmark_sets.py``).

Each set is an index in any format ``data.formats`` reads (CASIA as a Tp/ + Gt/ folder, Coverage as
IMDLBenCo pairs, the user's own records), validated up front like every evaluation's index (a set that
fails is reported in its row and the others run), then evaluated by the loop and scored by the functions
of the task's own evaluation script: ``score_heads`` (Task 1, ``lora_eval.py``), ``image_report`` and
``prediction_rows`` (Task 2, ``lora_infer.py``), ``score_hybrid`` (Task 3, ``hybrid_eval.py``), so a
row here equals that script's metrics on the same images. Thresholds are tuned on the one validation
index named (``--val``), never on a test set.

Outputs in the output folder: ``benchmark.csv`` (one row per set: :data:`LEADING_COLUMNS`, then every
metric column, then ``error`` and ``index``), ``report.html`` (``report.write_benchmark_report``),
``predictions_<set>.json`` (the evaluation scripts' per-image rows), ``skipped_<set>/`` (the bad-sample
policy's lists) and with a submission folder ``<folder>/<set>/`` (``submission``). With perturbations
(``--perturb``) each set is evaluated again under each condition right after its clean pass, into
``robustness.csv`` (``robustness``) and the report's robustness section.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qwen_forensics.checkpoints.detect import TASK1, TASK2
from qwen_forensics.config import relocate_path
from qwen_forensics.data.dataset import ForgeryDataset, Task2ImageDataset
from qwen_forensics.data.formats import BadIndex
from qwen_forensics.data.masks import MaskRule
from qwen_forensics.data.perturb import Perturbation
from qwen_forensics.data.records import read_index
from qwen_forensics.evaluation.images import CheckpointRunner
from qwen_forensics.evaluation.metrics import image_report
from qwen_forensics.evaluation.outputs import prediction_rows, write_predictions
from qwen_forensics.evaluation.predictions import SplitEvaluator
from qwen_forensics.evaluation.robustness import ROBUSTNESS_CSV, RobustnessTable, run_conditions
from qwen_forensics.evaluation.scoring import PixelCounter, score_heads, score_hybrid
from qwen_forensics.evaluation.submission import SubmissionWriter
from qwen_forensics.files import atomic_write
from qwen_forensics.report.page import BenchmarkSection, metric_direction, write_benchmark_report

BENCHMARK_CSV = "benchmark.csv"
REPORT_NAME = "report.html"
LEADING_COLUMNS = ("set", "format", "n_images", "n_fake", "n_skipped")
TRAILING_COLUMNS = ("error", "index")
VAL_TAG = "val"  # the validation index's tag in the evaluator (its skipped list: skipped_val/)
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def benchmark_outputs(names: Sequence[str], submission: str | os.PathLike | None) -> list[str]:
    """What a benchmark run writes into its output folder (``checkpoints.runs``), and its submission folder."""
    return [BENCHMARK_CSV, REPORT_NAME, ROBUSTNESS_CSV, *(f"predictions_{name}.json" for name in names), "skipped_*",
            *([str(submission)] if submission else [])]


def parse_sets(specs: Sequence[str], sets_file: str | os.PathLike | None, root: str | None) -> dict[str, str]:
    """The sets in order: ``--sets FILE`` (a JSON object ``{name: path}``, relative paths next to the file) then
    each ``--set NAME=PATH``; ``/root/autodl-tmp`` paths are relocated under ``root``. A name is letters,
    digits, ``.``, ``_`` or ``-`` (it names files), used once, and not ``val``."""
    pairs: list[tuple[str, str]] = []
    if sets_file is not None:
        sets_file = Path(sets_file)
        try:
            data = json.loads(sets_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--sets {sets_file}: cannot read it as JSON ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
            raise ValueError(f'--sets {sets_file}: write a JSON object {{"name": "index file or folder", ...}}')
        pairs += [(name, relocate_path(path, root, sets_file.parent.absolute())) for name, path in data.items()]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {spec!r}: write NAME=PATH (an index file or a Tp/ + Gt/ folder)")
        pairs.append((name, relocate_path(path, root, Path.cwd())))
    sets: dict[str, str] = {}
    for name, path in pairs:
        if not SET_NAME.match(name) or name == VAL_TAG:
            raise ValueError(f"set name {name!r}: use letters, digits, '.', '_' or '-' (not {VAL_TAG!r}); it names "
                             "the set's files")
        if name in sets:
            raise ValueError(f"set name {name!r} is given twice")
        sets[name] = path
    if not sets:
        raise ValueError("no set to evaluate: give --set NAME=PATH (repeatable) or --sets FILE")
    return sets


@dataclass
class SetResult:
    """One set's outcome: its counts and metrics, or why it was not evaluated (``error``)."""
    name: str
    index: str
    format: str
    n_images: int = 0
    n_fake: int = 0
    n_skipped: int = 0
    metrics: Mapping[str, Any] | None = None
    rows: list[dict] | None = None
    error: str | None = None
    submission: Path | None = None

    def csv_row(self) -> dict[str, Any]:
        return {"set": self.name, "format": self.format, "n_images": self.n_images, "n_fake": self.n_fake,
                "n_skipped": self.n_skipped, **(self.metrics or {}), "error": self.error or "", "index": self.index}


def _format_of(path: str) -> str:
    """The format of an index that failed validation ("" when it is no index at all)."""
    try:
        return read_index(path).format
    except BadIndex:
        return ""


def _p_fake(kind: str, preds) -> Any:
    """The P(fake) a submission reports: the LM's where the checkpoint has one (as ``predict.py``)."""
    return preds.p_fake_lm if kind not in (TASK1, TASK2) else preds.p_fake


def _score(runner: CheckpointRunner, records, preds, tuned: Mapping[str, float | None],
           pixel_threshold: float) -> tuple[dict, list[dict]]:
    """The task's evaluation script's metrics and per-image rows."""
    kind = runner.ckpt.kind
    if kind == TASK1:
        return score_heads(records, preds.p_fake, preds.counts, pixel_threshold=pixel_threshold,
                           tuned_threshold=tuned["p_fake"], imdlbenco=True)
    if kind == TASK2:
        metrics = image_report([r.label for r in records], preds.p_fake, tuned_threshold=tuned["p_fake"])
        return metrics, prediction_rows(records, preds, tuned["p_fake"], runner.setup.fake_word,
                                        runner.setup.real_word)
    return score_hybrid(records, preds, pixel_threshold=pixel_threshold, tuned_lm=tuned["p_fake_lm"],
                        tuned_head=tuned["p_fake_head"])


@dataclass
class Benchmark:
    """One benchmark run: a :class:`CheckpointRunner` over the sets, with the evaluation scripts' settings."""
    runner: CheckpointRunner
    out_dir: Path
    data_root: str
    batch_size: int
    num_workers: int
    on_bad_sample: str = "fail"
    pixel_threshold: float = 0.5
    submission_dir: Path | None = None
    say: Callable[[str], None] = print
    perturbations: Sequence[Perturbation] = ()
    perturb_seed: int = 0
    evaluator: SplitEvaluator | None = field(default=None, init=False, repr=False)
    robustness: RobustnessTable | None = field(default=None, init=False, repr=False)

    def _evaluator(self) -> SplitEvaluator:
        ckpt, root, seed = self.runner.ckpt, self.data_root, self.perturb_seed
        if ckpt.kind == TASK2:
            def dataset(records, perturbation=None):
                return Task2ImageDataset.from_records(records, root, ckpt.image_size, perturbation, seed)
        else:
            def dataset(records, perturbation=None):
                return ForgeryDataset(records, root, ckpt.image_size, MaskRule(), with_mask=False, with_truth=True,
                                      perturbation=perturbation, perturb_seed=seed)
        return SplitEvaluator(self.runner.accelerator, root, self.on_bad_sample, self.out_dir, self.batch_size,
                              self.num_workers, dataset=dataset, collate=self.runner.collator())

    def run(self, sets: Mapping[str, str], val: str | None = None) -> tuple[list[SetResult], dict] | None:
        """Validate every set (and ``val``) before the model loads, load it once, tune the thresholds on
        ``val``, evaluate each set in turn; returns the results in order and the tuned thresholds.

        Under several processes every process validates and predicts its share of each set; once every
        set is gathered the others return None and the main process scores and writes alone, so no
        process waits for another's files between sets."""
        evaluator = self.evaluator = self._evaluator()
        if val:
            evaluator.validate(VAL_TAG, val)
        results: dict[str, SetResult] = {}
        writers: dict[str, SubmissionWriter] = {}
        image_size = self.runner.ckpt.image_size if self.runner.ckpt.has_heads else None
        for name, path in sets.items():
            try:
                loaded = evaluator.validate(name, path)
                # On every process: a set it refuses must be left out by all of them; each writes its masks.
                if self.submission_dir is not None:
                    writers[name] = SubmissionWriter(loaded.records, self.data_root, self.submission_dir / name,
                                                     image_size, self.pixel_threshold, writes=evaluator.writes)
            except BadIndex as err:
                message = str(err.code)
                self.say(f"[benchmark] set {name} ({path}) is not evaluated:\n{message}")
                results[name] = SetResult(name, path, _format_of(path), error=message.splitlines()[-1])
                evaluator.discard(name)
                continue
            results[name] = SetResult(name, path, loaded.format, len(loaded.records),
                                      sum(r.label for r in loaded.records), loaded.skipped)
            evaluator.perturb(name, self.perturbations)
        evaluator.write_skipped()
        runnable = [name for name in sets if results[name].error is None]
        if not runnable:
            return (list(results.values()), {}) if evaluator.close() else None
        first = VAL_TAG if val else runnable[0]
        evaluator.open(first)
        self.runner.load()
        counter = (PixelCounter(self.runner.ckpt.image_size, self.pixel_threshold) if self.runner.ckpt.has_heads
                   else None)

        def predict(loader, num_records: int, on_batch=None):
            return self.runner.predict(loader, num_records, counter=counter, on_batch=on_batch)

        evaluator.warm(first, predict)
        tuned = evaluator.tune(predict, self.runner.score_columns)
        if self.perturbations:
            self.robustness = RobustnessTable(self.out_dir / ROBUSTNESS_CSV)
        main = self.runner.accelerator.is_main_process
        runs = {}
        for name in runnable:
            writer = writers.get(name)
            runs[name] = evaluator.evaluate(name, predict, on_batch=writer.on_batch if writer and image_size else None)
            self.say(f"[benchmark] {name}: {results[name].n_images} images ({results[name].n_fake} fake), "
                     f"{runs[name].images_per_s:.1f} images/s")
            # The perturbed passes gather on every process; the main one scores each (from the gathered
            # counts, no image read again) and appends its row as it finishes.
            run_conditions(evaluator, name, name, runs[name], self.perturbations, predict,
                           lambda r: _score(self.runner, r.records, r.predictions, tuned, self.pixel_threshold)[0],
                           self.robustness if main else None, say=self.say)
        if not evaluator.close(*(writer.writer for writer in writers.values())):
            return None
        for name, run in runs.items():
            result, writer = results[name], writers.get(name)
            result.metrics, result.rows = _score(self.runner, run.records, run.predictions, tuned,
                                                 self.pixel_threshold)
            write_predictions(self.out_dir / f"predictions_{name}.json", result.rows)
            if writer is not None:
                result.submission = writer.finish(_p_fake(self.runner.ckpt.kind, run.predictions),
                                                  getattr(run.predictions, "heatmaps", None))
        return list(results.values()), tuned

    def speed_line(self) -> str | None:
        """The ``[speed]`` line of every image evaluated (validation included), up to now; None if none was."""
        return self.evaluator.speed_line() if self.evaluator.evaluated else None

    def write(self, results: Sequence[SetResult], *, description: Mapping[str, Any]) -> tuple[Path, Path]:
        """``benchmark.csv`` and ``report.html`` of the results; returns both paths."""
        rows = [r.csv_row() for r in results]
        metric_columns = list(dict.fromkeys(k for r in results for k in (r.metrics or {})))
        columns = [*LEADING_COLUMNS, *metric_columns, *TRAILING_COLUMNS]

        def write_csv(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)

        table_path = atomic_write(self.out_dir / BENCHMARK_CSV, write_csv)
        shown = [*LEADING_COLUMNS, *(c for c in metric_columns if metric_direction(c)), "error"]
        sections = [BenchmarkSection(r.name, {"index": r.index, "format": r.format, "images": r.n_images,
                                              "fakes": r.n_fake, "skipped": r.n_skipped,
                                              **({"not evaluated": r.error} if r.error else {}),
                                              **({"submission": str(r.submission)} if r.submission else {})},
                                     r.metrics or {}, r.rows, self.runner.score_columns) for r in results]
        report = write_benchmark_report(self.out_dir / REPORT_NAME, title="Benchmark: one checkpoint, many sets",
                                        description=description, table=rows, columns=shown, sections=sections,
                                        extra_sections=[self.robustness.section()] if self.robustness else ())
        return table_path, report
