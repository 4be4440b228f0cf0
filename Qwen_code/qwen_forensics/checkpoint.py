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

Adapters: an adapter's tensor names are relative to the module it was injected into, its *root*.
Task 1 trains the LoRA on the vision tower alone, so its root is the tower (names such as
``blocks.7.attn.qkv``); Tasks 2 and 3 use the full model as root (``model.visual.blocks.7...``).
``load_adapter_strict`` attaches an adapter to ``model`` itself when its names resolve there, else
to the vision tower inside ``model``; so a tower adapter loads into a bare tower and into
``Qwen2_5_VLForConditionalGeneration`` alike. Files follow ``PeftModel.save_pretrained``'s layout
(keys prefixed ``base_model.model.``), so ``PeftModel.from_pretrained(root, folder)`` reads them too.
"""

from __future__ import annotations

import copy
import json
import os
import random
import warnings
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from qwen_forensics.files import atomic_write
from qwen_forensics.config import config_dict
from qwen_forensics.model.lora import PEFT_MODEL_PREFIX, locate_components

TRAINING_STATE_NAME = "training_state.pt"
RESOLVED_CONFIG_NAME = "resolved_config.json"
_LIST_LIMIT = 20


def rng_state_name(process_index: int) -> str:
    return f"rng_state_{process_index}.pt"


def _short(items: list[str]) -> str:
    shown = items[:_LIST_LIMIT]
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"{shown}{more}"


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (check the checkpoint path in the config)")


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None) -> None:
    # A private CPU copy per tensor: safetensors refuses tensors that share storage (views, ties).
    owned = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(owned, str(tmp), metadata=dict(metadata) if metadata else None))


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensor is read)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def _mismatch_report(
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
        parts.append(f"  missing from the file ({len(missing)}): {_short(missing)}")
    if unexpected:
        parts.append(f"  unexpected in the file ({len(unexpected)}): {_short(unexpected)}")
    if shapes:
        parts.append(f"  shape mismatches ({len(shapes)}): {_short(shapes)}")
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
    _save_tensors(state, Path(path), metadata)


def load_module_safetensors(module: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load a safetensors file into ``module`` strictly; returns the file's metadata.

    Missing, unexpected and shape-mismatched keys are all reported in one error naming the file.
    Floating dtypes are cast to the module's (e.g. a bf16 file into an fp32 module).
    """
    path = Path(path)
    _require_file(path, "weights file")
    tensors, metadata = _read_tensors(path)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    report = _mismatch_report(path, expected, tensors)
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
    _require_file(path, what)
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
    path = Path(ckpt_dir) / RESOLVED_CONFIG_NAME
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def read_resolved_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt_dir) / RESOLVED_CONFIG_NAME
    _require_file(path, "resolved config")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _adapter_owner(model: nn.Module, adapter_name: str) -> nn.Module:
    """The module the adapter was injected into: ``model`` itself or its unique descendant holding it."""
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        return model
    owners = [
        (name, m)
        for name, m in model.named_modules()
        if name and adapter_name in (getattr(m, "peft_config", None) or {})
    ]
    roots = [(n, m) for n, m in owners if not any(n.startswith(f"{o}.") for o, _ in owners if o != n)]
    if len(roots) != 1:
        found = [n for n, _ in roots]
        raise ValueError(f"expected one module carrying PEFT adapter {adapter_name!r} in the model, found {found}")
    return roots[0][1]


def save_adapter(model: nn.Module, adapter_dir: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` as a PEFT adapter folder (config + safetensors).

    ``model`` is a ``PeftModel``, a module with an injected adapter, or a model containing such a
    module (e.g. the full model whose vision tower got the adapter): names are stored relative to
    the module the adapter was injected into. Under DDP pass the unwrapped model, main process only.
    """
    adapter_dir = Path(adapter_dir)
    owner = _adapter_owner(model, adapter_name)
    config = copy.deepcopy(owner.peft_config[adapter_name])
    config.inference_mode = True
    state = get_peft_model_state_dict(owner, adapter_name=adapter_name, save_embedding_layers=False)
    if not isinstance(owner, PeftModel):
        state = {PEFT_MODEL_PREFIX + k: v for k, v in state.items()}
    _save_tensors(state, adapter_dir / ADAPTER_WEIGHTS_NAME, {"format": "pt"})
    config.save_pretrained(str(adapter_dir))
    return adapter_dir


def _target_module_of(key: str) -> str:
    return key.split(".lora_", 1)[0] if ".lora_" in key else key.rsplit(".", 1)[0]


def _has_submodule(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def _adapter_root(model: nn.Module, keys: list[str], weights_path: Path) -> str:
    modules = sorted({_target_module_of(k) for k in keys})
    candidates = [""]
    visual = locate_components(model)["visual"]
    if visual:
        candidates.append(visual)
    for root in candidates:
        base = model.get_submodule(root)
        if all(_has_submodule(base, m) for m in modules):
            return root
    base = model.get_submodule(candidates[-1])
    absent = [m for m in modules if not _has_submodule(base, m)]
    tried = ", ".join(repr(c or type(model).__name__) for c in candidates)
    raise ValueError(
        f"{weights_path}: adapter modules not found in the model under any root ({tried}): {_short(absent)}; "
        "the adapter was made for a different model or its tensor names were changed"
    )


class AdapterLoadResult(NamedTuple):
    root: str  # path of the module the adapter was attached to ("" = the model itself)
    config: LoraConfig
    num_tensors: int


def load_adapter_strict(
    model: nn.Module,
    adapter_dir: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> AdapterLoadResult:
    """Attach a saved LoRA adapter to ``model`` (plain module or PreTrainedModel) and verify it.

    Verification goes both ways after PEFT's key mapping: every LoRA tensor the injected adapter
    created has a tensor in the file, every file tensor belongs to the adapter, shapes agree, and
    after loading each model tensor equals its file tensor. Any failure raises naming the file; the
    model is then half-modified and must be discarded. Injection freezes the root's base weights;
    the LoRA weights train only with ``is_trainable=True``.
    """
    if isinstance(model, PeftModel):
        raise TypeError("load_adapter_strict takes the base model, not a PeftModel")
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG_NAME
    weights_path = adapter_dir / ADAPTER_WEIGHTS_NAME
    _require_file(config_path, "adapter config")
    _require_file(weights_path, "adapter weights")
    config = LoraConfig.from_pretrained(str(adapter_dir))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{config_path}: expected a LoRA adapter, found {type(config).__name__}")
    raw, _ = _read_tensors(weights_path)
    file_state = {k.removeprefix(PEFT_MODEL_PREFIX): v for k, v in raw.items()}
    if not file_state:
        raise ValueError(f"{weights_path} holds no tensors")
    root_path = _adapter_root(model, list(file_state), weights_path)
    root = model.get_submodule(root_path)
    if any(isinstance(m, LoraLayer) for m in root.modules()):
        raise ValueError(f"the model already carries LoRA layers; load {adapter_dir} into a fresh model")

    config.inference_mode = not is_trainable
    was_training = root.training
    inject_adapter_in_model(config, root, adapter_name=adapter_name)
    # New LoRA modules start in training mode (active dropout); give them the model's mode.
    root.train(was_training)
    expected = get_peft_model_state_dict(root, adapter_name=adapter_name, save_embedding_layers=False)
    report = _mismatch_report(weights_path, {k: v.shape for k, v in expected.items()}, file_state)
    if report:
        raise ValueError(report)
    load_result = set_peft_model_state_dict(root, file_state, adapter_name=adapter_name)
    if load_result.unexpected_keys:
        raise ValueError(f"{weights_path}: PEFT did not place {_short(sorted(load_result.unexpected_keys))}")
    loaded = get_peft_model_state_dict(root, adapter_name=adapter_name, save_embedding_layers=False)
    not_loaded = sorted(
        k
        for k, v in file_state.items()
        if not torch.equal(loaded[k], v.to(device=loaded[k].device, dtype=loaded[k].dtype))
    )
    if not_loaded:
        raise RuntimeError(f"{weights_path}: tensors did not reach the model: {_short(not_loaded)}")
    return AdapterLoadResult(root=root_path, config=config, num_tensors=len(file_state))
