"""Every file and folder name of the on-disk layouts, and how the names a config gives map onto them.

The names the scripts write (the constants below) appear in no other module of ``Qwen_code``.

The user's configs come from earlier scripts that wrote ``torch.save`` pickles (``heads.pt``,
``modular_vit_lora.pt``) and Hugging Face ``datasets`` folders. These scripts write safetensors and
folders instead, but the names in the user's configs must keep working, for training and for the
evaluation that reads what training wrote:

- a weights file named ``*.pt`` / ``*.pth`` / ``*.bin`` is written and read as the ``.safetensors``
  file of the same stem (``task3_heads.pt`` -> ``task3_heads.safetensors``);
- a Task 1 checkpoint (a folder: adapter, heads, config) named ``*.pt`` is the folder of that stem
  (``final_trained_heads_2_all.pt`` -> ``final_trained_heads_2_all/``);
- an adapter named by one of its files (``task3_lora/adapter_model.safetensors``) is its folder;
- a Task 2 training set named without ``.jsonl`` is a folder holding ``records.jsonl``.

Each function has the signature of a config field's ``resolve`` (see ``config.option``): it takes
the relocated path, its role ("in" / "out") and whether inputs must exist, and returns the path to
use and a note for the log (None when the name is used as given). A file of the earlier scripts
found where a safetensors file or folder is expected is an error that says so, never a silent
fallback to random weights.
"""

from __future__ import annotations

import os
from pathlib import Path

ADAPTER_DIR = "adapter"                      # PEFT adapter folder inside a Task 1 / Task 3 checkpoint
HEADS_FILE = "heads.safetensors"             # forensic heads (Tasks 1 and 3)
FUSION_FILE = "fusion.safetensors"           # Task 3's fusion projector and the hybrid spec
FINAL_DIR = "final"                          # the default final checkpoint folder of a training run
RESOLVED_CONFIG_NAME = "resolved_config.json"  # the config a folder was written with
TRAINING_STATE_NAME = "training_state.pt"    # optimizer, scheduler, step, epoch (resume)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "adapter_model.bin")
DATASET_FILE = "records.jsonl"               # a Task 2 training set given as a folder
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Marker files of a Hugging Face datasets save_to_disk folder (what the earlier map.py wrote).
HF_DATASET_MARKERS = ("dataset_info.json", "state.json")


def _earlier_pickle(path: Path, expected: Path) -> ValueError:
    return ValueError(f"{path} is a file written by the earlier scripts (torch.save); these scripts read only "
                      f"what they write themselves ({expected}). Train again with these scripts, or point the "
                      "config at the safetensors output")


def _require(path: Path, what: str, given: Path) -> None:
    if path.exists():
        return
    alias = "" if path == given else f" (the name {given.name!r} stands for {path.name!r})"
    raise FileNotFoundError(f"{what} {path} does not exist{alias}; nothing was loaded yet. Fix the path in the "
                            "config or pass --set KEY=PATH")


def weights_file(value: str, role: str, check: bool) -> tuple[str, str | None]:
    """A single weights file (heads, fusion projector): ``*.pt`` means the ``.safetensors`` of that stem."""
    given = Path(value)
    target = given.with_suffix(".safetensors") if given.suffix in TORCH_SUFFIXES else given
    note = None
    if target != given:
        verb = "written" if role == "out" else "read"
        note = f"{given.name} is {verb} as safetensors: {target}"
    if role == "in" and check:
        if not target.is_file() and given.is_file() and target != given:
            raise _earlier_pickle(given, target)
        _require(target, "weights file", given)
    return str(target), note


def checkpoint_folder(value: str, role: str, check: bool) -> tuple[str, str | None]:
    """A Task 1 checkpoint folder: ``name.pt`` is the folder ``name/``."""
    given = Path(value)
    target = given.with_suffix("") if given.suffix in TORCH_SUFFIXES else given
    note = None
    if target != given:
        verb = "written" if role == "out" else "read"
        note = f"{given.name} is {verb} as the checkpoint folder {target}/ (LoRA adapter + heads safetensors)"
    if role == "in" and check:
        if given.is_file():
            raise _earlier_pickle(given, target)
        _require(target, "checkpoint folder", given)
    return str(target), note


def adapter_folder(value: str, role: str, check: bool) -> tuple[str, str | None]:
    """A PEFT adapter folder, also when the config names one of the files inside it."""
    given = Path(value)
    target = given.parent if given.name in ADAPTER_FILES else given
    note = f"{given.name} names a file of the adapter folder {target}/; the folder is used" if target != given else None
    if role == "in" and check:
        _require(target, "adapter folder", given)
    return str(target), note


def dataset_file(value: str, role: str, check: bool) -> tuple[str, str | None]:
    """A Task 2 training set: a ``.jsonl`` file, or a folder holding ``records.jsonl``."""
    given = Path(value)
    if given.suffix == ".jsonl":
        target, note = given, None
    else:
        target = given / DATASET_FILE
        note = f"{given.name} is a folder holding the training records: {target}"
    if role == "in" and check:
        if given.is_dir() and not target.is_file() and any((given / m).is_file() for m in HF_DATASET_MARKERS):
            raise ValueError(f"{given} is a Hugging Face datasets folder written by the earlier map.py (pixel tensors); "
                             "these scripts read the records map.py writes now: run Qwen_code/task2_lm_lora/map.py")
        _require(target, "training set", given)
    return os.fspath(target), note


def epoch_dir(epoch: int) -> str:
    """The checkpoint folder a training run writes after ``epoch`` (``epoch_0``, ``epoch_1``, ...)."""
    return f"epoch_{epoch}"


def best_dir(metric: str) -> str:
    """The copy of the best epoch's checkpoint by ``metric`` (``best_by_AUROC``)."""
    return f"best_by_{metric}"


# What a training run writes into its output folder besides its final checkpoint (``runs``).
TRAINING_RUN_ENTRIES = (RESOLVED_CONFIG_NAME, "epoch_*", "best_by_*", "skipped_*")


def rng_state_name(process_index: int) -> str:
    """Each process's random number generator states (each DDP rank resumes its own streams)."""
    return f"rng_state_{process_index}.pt"
