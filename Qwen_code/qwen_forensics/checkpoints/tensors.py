"""Checkpoint I/O. A checkpoint is a folder; every load is strict and names the file it read.

Typical folder (names chosen by the task):
    adapter/                    PEFT adapter (adapter_config.json + adapter_model.safetensors)
    heads.safetensors           plain modules, ``save_module_safetensors``
    training_state.pt           optimizer, scheduler, step, epoch, extra (``save_training_state``)
    rng_state_<process>.pt      one per process, so each DDP rank resumes its own random streams
    resolved_config.json        ``write_resolved_config``

Everything written with ``torch.save`` holds only tensors and plain Python values, so it loads
with ``torch.load(..., weights_only=True)``; this is checked right after saving. Files are written
to a temporary name and renamed, so an interrupted save never leaves a truncated file behind.
(PEFT adapters: ``adapters``.)
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME, TRAINING_STATE_NAME, rng_state_name
from qwen_forensics.config.loading import config_dict
from qwen_forensics.files import atomic_write, atomic_write_text
from qwen_forensics.model.loader import short_list


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (check the checkpoint path in the config)")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None) -> None:
    # A private CPU copy per tensor: safetensors refuses tensors that share storage (views, ties).
    owned = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(owned, str(tmp), metadata=dict(metadata) if metadata else None))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensor is read)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def mismatch_report(
    path: Path, expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]
) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{path} does not match the model:"]
    if missing:
        parts.append(f"  missing from the file ({len(missing)}): {short_list(missing)}")
    if unexpected:
        parts.append(f"  unexpected in the file ({len(unexpected)}): {short_list(unexpected)}")
    if shapes:
        parts.append(f"  shape mismatches ({len(shapes)}): {short_list(shapes)}")
    parts.append("  (was it written by a different model/head configuration or code version?)")
    return "\n".join(parts)


def save_module_safetensors(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a module's state dict (or a state dict) to one safetensors file with string metadata."""
    state = (
        module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    )
    if metadata is not None:
        bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise TypeError(f"safetensors metadata must map str to str (json.dumps other values); got {bad}")
    save_tensors(state, Path(path), metadata)


def load_module_safetensors(module: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load a safetensors file into ``module`` strictly; returns the file's metadata.

    Missing, unexpected and shape-mismatched keys are all reported in one error naming the file.
    Floating dtypes are cast to the module's (e.g. a bf16 file into an fp32 module).
    """
    path = Path(path)
    require_file(path, "weights file")
    tensors, metadata = read_tensors(path)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    report = mismatch_report(path, expected, tensors)
    if report:
        raise ValueError(report)
    module.load_state_dict(tensors, strict=True)
    return metadata


def _capture_rng() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _restore_rng(state: Mapping[str, Any], path: Path) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    cuda_states = state["cuda"]
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"{path}: saved {len(cuda_states)} CUDA RNG states but {torch.cuda.device_count()} devices are "
                "visible; CUDA random streams are not restored",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            torch.cuda.set_rng_state_all(cuda_states)


def _torch_save_checked(obj: Any, path: Path) -> None:
    def write(tmp: Path) -> None:
        torch.save(obj, tmp)
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TypeError(
                f"{path}: the training state holds values that torch.load(weights_only=True) refuses; "
                f"keep `extra` to tensors and plain Python values ({exc})"
            ) from exc

    atomic_write(path, write)


def _torch_load(path: Path, what: str) -> Any:
    require_file(path, what)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_training_state(
    ckpt_dir: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    step: int,
    epoch: int,
    extra: Mapping[str, Any] | None = None,
    *,
    process_index: int = 0,
) -> None:
    """Save what ``resume`` needs besides the weights.

    Call on every process: process 0 writes the optimizer/scheduler/counters (identical across
    DDP ranks) and every process writes its own RNG state. ``extra`` holds tensors and plain
    Python values (e.g. best metric so far, a sampler generator state as a tensor).
    """
    ckpt_dir = Path(ckpt_dir)
    if process_index == 0:
        state = {
            "step": int(step),
            "epoch": int(epoch),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "extra": dict(extra or {}),
        }
        _torch_save_checked(state, ckpt_dir / TRAINING_STATE_NAME)
    _torch_save_checked(_capture_rng(), ckpt_dir / rng_state_name(process_index))


def load_training_state(
    ckpt_dir: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    *,
    process_index: int = 0,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and (for this process) RNG; returns ``{step, epoch, extra}``."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / TRAINING_STATE_NAME
    state = _torch_load(path, "training state")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: the saved optimizer state does not fit this optimizer's parameter groups: {exc}"
        ) from exc
    if (scheduler is None) != (state["scheduler"] is None):
        raise ValueError(
            f"{path}: scheduler state {'missing' if state['scheduler'] is None else 'present'} in the file "
            f"but a scheduler was {'given' if scheduler is not None else 'not given'}"
        )
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        rng_path = ckpt_dir / rng_state_name(process_index)
        if not rng_path.is_file():
            raise FileNotFoundError(
                f"{rng_path} not found: the run was saved with fewer processes; "
                "resume with the same process count or pass restore_rng=False"
            )
        _restore_rng(_torch_load(rng_path, "RNG state"), rng_path)
    return {"step": state["step"], "epoch": state["epoch"], "extra": state["extra"]}


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"resolved config value of type {type(value).__name__} is not JSON serialisable: {value!r}")


def write_resolved_config(ckpt_dir: str | os.PathLike, config: Mapping[str, Any] | Any) -> Path:
    """Write the effective configuration (a mapping, or a config dataclass with its loading record:
    where each path came from and the notes) as ``resolved_config.json``."""
    payload = config_dict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return atomic_write_text(Path(ckpt_dir) / RESOLVED_CONFIG_NAME, text)


def read_resolved_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt_dir) / RESOLVED_CONFIG_NAME
    require_file(path, "resolved config")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def require_metadata(path: Path, keys: Sequence[str], writer: str) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (check the checkpoint paths in the config)")
    meta = read_safetensors_metadata(path)
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path}: metadata lacks {missing}; it was not written by {writer}")
    return meta
