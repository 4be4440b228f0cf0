"""The leak guard of every script that reads a validation index (issue 12 item 1, SPEC 6.7).

A validation index decides the best checkpoints and the training log's ``val_*`` columns
(``lora_train.py``, ``hybrid_train.py``: ``ann_val``) and every tuned threshold (the four evaluation
scripts: ``ann_val`` / ``val_annotation_file``). Frames of footage that is also in the training set
make those numbers optimistic, so before any model loads the scripts compare the validation index
with the training index by video group (``data.leakage``):

- training scripts: against their own ``ann_train``;
- evaluation scripts: against the training set the checkpoint's recorded config names:
  ``ann_train`` (Tasks 1 and 3), or Task 2's ``train_dataset_path`` (the map.py records, whose
  ``image_path`` is all the check needs).

Overlap stops the script (:class:`LeakGuardError`, a ``SystemExit`` with the counts and the fix)
unless the config sets ``allow_val_overlap: true``; then it warns and the counts go into the
training log / metrics CSV (:meth:`SplitCheck.columns`). A checkpoint that records no training set
(one assembled by hand) cannot be checked: that is said, and recorded as ``val_leak_check``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME
from qwen_forensics.checkpoints.tensors import read_resolved_config
from qwen_forensics.data.leakage import LeakageReport, VideoLeakageError, require_no_leakage
from qwen_forensics.data.lm_records import read_task2_dataset
from qwen_forensics.data.records import Record, load_index

ALLOW_KEY = "allow_val_overlap"
# Keys of a training config (as a checkpoint records it) that name the training set.
TRAINING_INDEX_KEY = "ann_train"
TASK2_TRAINING_SET_KEY = "train_dataset_path"


class LeakGuardError(SystemExit):
    """The validation index cannot be used as configured; the message says why and what to do."""


@dataclass(frozen=True)
class TrainingSet:
    """The records a model was trained on (only ``image_path`` matters here) and where they came from."""
    records: list[Record]
    source: str


@dataclass(frozen=True)
class SplitCheck:
    """What the guard found, for the training log / metrics CSV and the report."""
    status: str | None                 # "clean", "overlap allowed", "not checked: <why>"; None: no validation index
    report: LeakageReport | None = None

    def columns(self) -> dict[str, Any]:
        """``val_leak_check`` plus, when the check ran, ``val_overlap_records`` / ``val_overlap_groups`` /
        ``val_groups`` (see ``LeakageReport.metrics``); nothing without a validation index."""
        if self.status is None:
            return {}
        return {"val_leak_check": self.status, **(self.report.metrics() if self.report is not None else {})}


NO_VALIDATION = SplitCheck(None)


def read_training_set(path: str | os.PathLike, task2: bool = False) -> TrainingSet:
    """A training index (``load_index``) or, with ``task2``, a map.py training set as records."""
    if task2:
        data = read_task2_dataset(path)
        records = [Record(s.image_path, None, None, s.label, i) for i, s in enumerate(data.samples)]
        return TrainingSet(records, str(path))
    return TrainingSet(load_index(path), str(path))


def recorded_training_set(folder: str | os.PathLike, *, allow_overlap: bool,
                          say: Callable[[str], None] = print) -> TrainingSet | str:
    """The training set named by the config ``folder`` records, or why there is none to compare with.

    A recorded path that is gone is an error: the validation index would go unchecked. With
    ``allow_overlap`` it is a warning instead and the reason is returned.
    """
    config_file = Path(folder) / RESOLVED_CONFIG_NAME
    if not config_file.is_file():
        return f"not checked: no {config_file} records the training set"
    saved = read_resolved_config(folder)
    for key, task2 in ((TRAINING_INDEX_KEY, False), (TASK2_TRAINING_SET_KEY, True)):
        value = saved.get(key)
        if not isinstance(value, str) or not value:
            continue
        if Path(value).is_file():
            return read_training_set(value, task2)
        problem = (f"{config_file} says the model was trained on {key} = {value}, which is not here, so the "
                   "validation index cannot be checked for video overlap with it")
        if not allow_overlap:
            raise LeakGuardError(f"stopped before loading any model: {problem}. Restore that file, or set "
                                 f"{ALLOW_KEY} to true to tune on the validation index unchecked.")
        say(f"warning: {problem}; running anyway because {ALLOW_KEY} is set")
        return f"not checked: {key} {value} is missing"
    return f"not checked: {config_file} records no training set ({TRAINING_INDEX_KEY} / {TASK2_TRAINING_SET_KEY})"


def guard_validation_index(val_index: str, training: TrainingSet | str, *, allow_overlap: bool, val_key: str,
                           say: Callable[[str], None] = print) -> SplitCheck:
    """Compare ``val_index`` with the training set by video group; stop on overlap unless allowed.

    ``training`` is a :class:`TrainingSet` or the reason there is none (``recorded_training_set``),
    which is printed and recorded. ``val_key`` is the config key naming ``val_index`` (for messages).
    """
    if isinstance(training, str):
        say(f"note: {val_key} {val_index} is {training.removeprefix('not checked: ')}; its video overlap with the "
            "training set is not checked")
        return SplitCheck(training)
    try:
        report = require_no_leakage(training.records, load_index(val_index), allow_overlap=allow_overlap,
                                    train_name=training.source, val_name=val_index, allow_key=ALLOW_KEY)
    except VideoLeakageError as err:
        raise LeakGuardError(f"stopped before loading any model ({val_key}): {err}") from None
    if report.ok:
        say(f"{val_key}: no video group of {val_index} is in the training set {training.source}")
        return SplitCheck("clean", report)
    return SplitCheck("overlap allowed", report)


def guard_training_split(cfg, say: Callable[[str], None] = print) -> SplitCheck:
    """The guard of a training config with ``ann_train`` / ``ann_val`` (:data:`NO_VALIDATION` without ``ann_val``)."""
    if not cfg.ann_val:
        return NO_VALIDATION
    return guard_validation_index(cfg.ann_val, read_training_set(cfg.ann_train), allow_overlap=cfg.allow_val_overlap,
                                  val_key="ann_val", say=say)


def guard_checkpoint_split(val_index: str | None, checkpoint_folder: str | os.PathLike, *, allow_overlap: bool,
                           val_key: str, say: Callable[[str], None] = print) -> SplitCheck:
    """The guard of an evaluation that tunes thresholds on ``val_index`` (:data:`NO_VALIDATION` without
    one), against the training set recorded in ``checkpoint_folder``."""
    if not val_index:
        return NO_VALIDATION
    training = recorded_training_set(checkpoint_folder, allow_overlap=allow_overlap, say=say)
    return guard_validation_index(val_index, training, allow_overlap=allow_overlap, val_key=val_key, say=say)
