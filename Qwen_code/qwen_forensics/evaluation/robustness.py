"""Robustness under the field's perturbations (``--perturb``), the model loaded once.

Every evaluation script, ``benchmark_sets.py`` and ``predict.py`` take the conditions of ``data.perturb``.
The clean pass is the ordinary evaluation; then :func:`run_conditions` evaluates each perturbed copy of
the set (``SplitEvaluator.perturb``: the copy's loader decodes and perturbs in its workers while the
pass before it runs), scores it with the script's own scoring function and thresholds, and appends its
row to ``robustness.csv`` at once (:class:`RobustnessTable`), so an interrupted study keeps the
conditions that finished.

``robustness.csv``: one row per (set, perturbation, level): :data:`LEADING_COLUMNS`, every metric column
of the evaluation (the same names as its CSV), then ``seconds`` (the pass's inference loop) and
``images_per_s``. The clean row has perturbation ``none`` and an empty level; its metrics are the
evaluation's own.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qwen_forensics.data.perturb import CLEAN_NAME, Perturbation, level_text
from qwen_forensics.evaluation.predictions import SplitEvaluator, SplitRun, condition_tag
from qwen_forensics.files import atomic_write
from qwen_forensics.report.robustness import robustness_section

ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_HEADING = "Robustness"
LEADING_COLUMNS = ("set", "perturbation", "level")
TRAILING_COLUMNS = ("seconds", "images_per_s")


class RobustnessTable:
    """``robustness.csv`` (see the module doc), rewritten whole (atomically) after each row, so its header
    always covers every column seen so far."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def add(self, set_name: str, perturbation: Perturbation | None, metrics: Mapping[str, Any],
            run: SplitRun) -> dict[str, Any]:
        row = {"set": set_name, "perturbation": CLEAN_NAME if perturbation is None else perturbation.kind,
               "level": "" if perturbation is None else level_text(perturbation.level), **metrics,
               "seconds": run.seconds, "images_per_s": run.images_per_s}
        self.rows.append(row)
        self._write()
        return row

    def _write(self) -> None:
        metric_columns = [c for c in dict.fromkeys(k for r in self.rows for k in r)
                          if c not in (*LEADING_COLUMNS, *TRAILING_COLUMNS)]
        columns = [*LEADING_COLUMNS, *metric_columns, *TRAILING_COLUMNS]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(self.rows)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, write)

    def section(self) -> tuple[str, str]:
        """The report's robustness section: (heading, HTML)."""
        return ROBUSTNESS_HEADING, robustness_section({"": self.rows})


def run_conditions(evaluator: SplitEvaluator, tag: str, set_name: str, clean: SplitRun,
                   conditions: Sequence[Perturbation], predict: Callable[..., Any],
                   score: Callable[[SplitRun], Mapping[str, Any]], table: RobustnessTable | None,
                   say: Callable[[str], None] = print, **predict_kwargs) -> None:
    """After the clean pass ``clean`` of the index ``tag`` (queued with ``evaluator.perturb(tag, conditions)``),
    evaluate each condition with ``predict(loader, num_records, **predict_kwargs)`` and, on the process that
    writes (``table`` not None), add the clean row and each condition's row to ``table`` as it finishes.
    ``score(run)`` returns the metrics of one pass (the script's own scoring, its tuned thresholds). Every
    process calls this: each pass gathers across processes."""
    if table is not None:
        table.add(set_name, None, score(clean), clean)
    for perturbation in conditions:
        run = evaluator.evaluate(condition_tag(tag, perturbation), predict, **predict_kwargs)
        if table is not None:
            table.add(set_name, perturbation, score(run), run)
            say(f"[robustness] {set_name} {perturbation.name}: {len(run.records)} images in {run.seconds:.1f} s "
                f"({run.images_per_s:.1f} images/s) -> {table.path}")
