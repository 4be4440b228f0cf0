"""Which task wrote a checkpoint folder, from the files in it, and what its training recorded (base
model, image size): ``predict.py`` and every tool that takes any task's checkpoint.

Checkpoint folders (what :data:`CHECKPOINT_CONTENTS` tells a user):

- Task 1 (``lora_train.py``): ``adapter/``, ``heads.safetensors``, ``resolved_config.json``. Heads only:
  Task 1 never trains the language model, so its answer is subtask 2's question (``full_model_eval.py``),
  and asking it here would load the whole LM for an untrained answer (about 15 GiB more for the 7B).
- Task 2 (``LORA.py``'s ``save_lora_path``): ``adapter_config.json``, ``adapter_model.safetensors`` and a
  ``resolved_config.json`` holding the prompt setup (``task2.SETUP_KEYS``). LM answer only.
- Task 3 (``hybrid_train.py``): a fusion ``*.safetensors`` whose metadata holds ``hybrid_spec``, a heads
  ``*.safetensors`` (metadata ``heads_config``) and, unless every LoRA was off, a PEFT adapter folder,
  under any names: ``final/{adapter/, heads.safetensors, fusion.safetensors}`` (the default), the seed's
  ``task3_lora/``, ``task3_heads.safetensors``, ``task3_fusion.safetensors`` in the output folder, or an
  ``epoch_N/`` folder. Heads and LM answer.

A training output folder also works: when the folder itself is none of these, the final checkpoint
its ``resolved_config.json`` names, else ``final/``, else its only checkpoint subfolder (Task 2's
adapter next to the Trainer's folder) is used, with a note.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from safetensors import SafetensorError

from qwen_forensics.checkpoints.names import ADAPTER_DIR, ADAPTER_FILES, HEADS_FILE, RESOLVED_CONFIG_NAME
from qwen_forensics.checkpoints.task2 import adapter_setup
from qwen_forensics.checkpoints.task3 import CheckpointPaths, read_hybrid_spec
from qwen_forensics.checkpoints.tensors import read_resolved_config, read_safetensors_metadata
from qwen_forensics.model.hybrid import HybridSpec
from qwen_forensics.model.loader import MODEL_FOLDER_CONTENTS

TASK1, TASK2, TASK3 = "task1", "task2", "task3"


CHECKPOINT_CONTENTS = (
    "Task 1 (lora_train.py): adapter/ + heads.safetensors + resolved_config.json; "
    "Task 2 (LORA.py save_lora_path): adapter_config.json + adapter_model.safetensors + resolved_config.json "
    "with image_size, prompt_text, fake_token, real_token; "
    "Task 3 (hybrid_train.py): a fusion *.safetensors (metadata hybrid_spec) + a heads *.safetensors (metadata "
    "heads_config) + an adapter folder (adapter_config.json) unless every LoRA was off, e.g. final/{adapter/, "
    "heads.safetensors, fusion.safetensors} or task3_lora/ + task3_heads.safetensors + task3_fusion.safetensors. "
    "A training output folder is accepted when its final/ (or its only checkpoint subfolder) is one of these")


# The keys of a training config that name the final checkpoint (Task 1, Task 2, Task 3's fusion file).
FINAL_CHECKPOINT_KEYS = ("final_trained_heads", "save_lora_path", "fusion_checkpoint")


MODEL_KEYS = {TASK1: "model_path", TASK2: "base_model_path", TASK3: "base_model_path"}


class CheckpointError(ValueError):
    """A folder that is not a checkpoint predict.py can read; the message lists what one must contain."""


@dataclass(frozen=True)
class Checkpoint:
    """A detected checkpoint: its task, where its parts are and what its training recorded."""
    kind: str
    folder: Path
    model_path: str | None          # base model recorded by the training (None: not recorded)
    image_size: int | None          # letterbox side; None: Task 2 trained at native resolution
    task3: CheckpointPaths | None = None
    notes: tuple[str, ...] = ()

    @property
    def has_heads(self) -> bool:
        return self.kind in (TASK1, TASK3)

    @property
    def has_lm(self) -> bool:
        return self.kind in (TASK2, TASK3)


def _metadata_or_none(path: Path) -> dict[str, str] | None:
    try:
        return read_safetensors_metadata(path)
    except (OSError, SafetensorError):
        return None


def _pick(candidates: list[Path], preferred: Sequence[str], what: str, folder: Path) -> Path:
    """The one candidate, else the first whose name is preferred; an error naming them otherwise."""
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        chosen = [c for c in candidates if c.name == name]
        if chosen:
            return chosen[0]
    found = ", ".join(c.name for c in candidates) or "none"
    raise CheckpointError(f"{folder}: cannot tell which {what} belongs to the checkpoint (found: {found}); "
                          f"keep one per folder. A checkpoint folder holds: {CHECKPOINT_CONTENTS}")


def _recorded(folder: Path) -> dict:
    path = folder / RESOLVED_CONFIG_NAME
    return read_resolved_config(folder) if path.is_file() else {}


def _task3_here(folder: Path, fusion_files: list[Path]) -> Checkpoint:
    saved = _recorded(folder)
    recorded_names = [Path(saved[k]).name for k in ("fusion_checkpoint", "head_checkpoint", "lora_checkpoint")
                      if isinstance(saved.get(k), str)]
    fusion = _pick(fusion_files, [*recorded_names, "fusion.safetensors"], "fusion file", folder)
    spec: HybridSpec = read_hybrid_spec(fusion)
    heads_files = [f for f in sorted(folder.glob("*.safetensors"))
                   if f != fusion and "heads_config" in (_metadata_or_none(f) or {})]
    if not heads_files:
        raise CheckpointError(f"{folder}: {fusion.name} is a Task 3 fusion file but no heads *.safetensors (metadata "
                              f"heads_config) is next to it. A checkpoint folder holds: {CHECKPOINT_CONTENTS}")
    heads = _pick(heads_files, [*recorded_names, fusion.name.replace("fusion", "heads"), "heads.safetensors"],
                  "heads file", folder)
    adapters = [d for d in sorted(folder.iterdir()) if d.is_dir() and (d / ADAPTER_FILES[1]).is_file()]
    if any(spec.lora_targets.values()):
        if not adapters:
            raise CheckpointError(f"{folder}: {fusion.name} was trained with LoRA but no adapter folder "
                                  f"({ADAPTER_FILES[1]}) is next to it. A checkpoint folder holds: "
                                  f"{CHECKPOINT_CONTENTS}")
        adapter = _pick(adapters, [*recorded_names, "adapter"], "adapter folder", folder)
    else:
        adapter = folder / "adapter"
    return Checkpoint(TASK3, folder, saved.get(MODEL_KEYS[TASK3]), spec.image_size,
                      task3=CheckpointPaths(adapter, heads, fusion))


def _detect_here(folder: Path) -> Checkpoint | None:
    fusion_files = [f for f in sorted(folder.glob("*.safetensors")) if "hybrid_spec" in (_metadata_or_none(f) or {})]
    if fusion_files:
        return _task3_here(folder, fusion_files)
    if (folder / ADAPTER_DIR).is_dir() and (folder / HEADS_FILE).is_file():
        saved = _recorded(folder)
        if "image_size" not in saved:
            raise CheckpointError(f"{folder}: a Task 1 checkpoint needs the {RESOLVED_CONFIG_NAME} lora_train.py "
                                  "writes next to adapter/ and heads.safetensors (it records image_size and "
                                  f"model_path). A checkpoint folder holds: {CHECKPOINT_CONTENTS}")
        return Checkpoint(TASK1, folder, saved.get(MODEL_KEYS[TASK1]), int(saved["image_size"]))
    if (folder / ADAPTER_FILES[1]).is_file():
        try:
            setup = adapter_setup(folder)
        except (FileNotFoundError, ValueError) as err:
            raise CheckpointError(f"{folder} holds a PEFT adapter but not Task 2's prompt setup ({err}). A checkpoint "
                                  f"folder holds: {CHECKPOINT_CONTENTS}") from None
        return Checkpoint(TASK2, folder, _recorded(folder).get(MODEL_KEYS[TASK2]), setup.image_size)
    return None


def _final_candidates(folder: Path) -> list[Path]:
    """Where a training output folder keeps its final checkpoint: what its config names, then final/."""
    saved = _recorded(folder)
    found = []
    for key in FINAL_CHECKPOINT_KEYS:
        value = saved.get(key)
        if isinstance(value, str) and value:
            named = Path(value).parent if key == "fusion_checkpoint" else Path(value)
            # Absolute as written, else the same name inside this folder (the run was moved).
            found += [named, folder / named.name]
    found.append(folder / "final")
    unique = list(dict.fromkeys(p for p in found if p.is_dir() and p.resolve() != folder.resolve()))
    return unique


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:20]) + (f" ... and {len(names) - 20} more" if len(names) > 20 else "")
    return shown or "nothing"


def _with_note(found: Checkpoint, note: str) -> Checkpoint:
    return Checkpoint(found.kind, found.folder, found.model_path, found.image_size, found.task3, (*found.notes, note))


def detect_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint in ``path`` (a checkpoint folder, or a training output folder holding one)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"--ckpt {folder}: not a folder. A checkpoint folder holds: {CHECKPOINT_CONTENTS}")
    found = _detect_here(folder)
    if found is not None:
        return found
    for candidate in _final_candidates(folder):
        found = _detect_here(candidate)
        if found is not None:
            return _with_note(found, f"{folder} is a training output folder; using its final checkpoint {candidate}")
    inside = [c for c in (_detect_here(d) for d in sorted(folder.iterdir()) if d.is_dir()) if c is not None]
    if len(inside) == 1:
        return _with_note(inside[0], f"{folder} holds one checkpoint; using {inside[0].folder}")
    if inside:
        raise CheckpointError(f"--ckpt {folder} holds several checkpoints ({', '.join(c.folder.name for c in inside)}) "
                              "and names none as final; pass the one to use")
    raise CheckpointError(f"--ckpt {folder} is not a checkpoint folder (it holds: {_listing(folder)}). A checkpoint "
                          f"folder holds: {CHECKPOINT_CONTENTS}")


def base_model_path(ckpt: Checkpoint, override: str | None = None) -> str:
    """The base model a checkpoint runs on: ``override`` (``--model``) or the one its training recorded; a
    :class:`CheckpointError` saying which and what the folder must hold when it is not a folder here."""
    model = override or ckpt.model_path
    if model is None or not Path(model).is_dir():
        if model is None:
            where = "the checkpoint records no base model"
        elif override:
            where = f"--model {model} is not a folder"
        else:
            where = (f"the checkpoint records {model!r} ({MODEL_KEYS[ckpt.kind]} in its recorded config), which is "
                     "not a folder here")
        raise CheckpointError(f"{where}; pass --model PATH (a folder with {MODEL_FOLDER_CONTENTS})")
    return model


def open_checkpoint(path: str | os.PathLike, override: str | None = None) -> tuple[Checkpoint, str] | None:
    """A command's ``--ckpt`` and ``--model``: the checkpoint and its base model, the checkpoint's notes
    printed; None, with the error on stderr, when either cannot be used (the command then exits with 2)."""
    try:
        ckpt = detect_checkpoint(path)
        model = base_model_path(ckpt, override)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    for note in ckpt.notes:
        print(f"note: {note}")
    return ckpt, model
