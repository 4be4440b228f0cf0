"""The one table of dtype names (config strings "bfloat16", "bf16", "float32", ... to torch dtypes and the
autocast names "bf16" / "fp16" / "fp32" the loops take) and the one rule for what a script runs in on a
device (:func:`precision`), used by every script that loads weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a config string or a torch.dtype to a torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[key]


def amp_name(name: str | torch.dtype) -> str:
    """The autocast name of a dtype: ``amp_name("bfloat16") == "bf16"``."""
    return AMP_NAMES[resolve_dtype(name)]


@dataclass(frozen=True)
class Precision:
    """What a script runs in on its device: the dtype its weights load as, the autocast of its loops,
    and one line to print when the config's choice was changed for this device (None otherwise)."""
    weights: torch.dtype
    autocast: str
    note: str | None = None


def _on_device(name: str | torch.dtype, cuda: bool, bf16_supported: bool) -> tuple[torch.dtype, str | None]:
    asked = resolve_dtype(name)
    if not cuda:
        return torch.float32, None
    if asked == torch.float16 and bf16_supported:
        return torch.bfloat16, (f"{name}: this GPU supports bfloat16, which runs as fast as float16 without its "
                                "overflow, so bfloat16 is used")
    if asked == torch.bfloat16 and not bf16_supported:
        return torch.float16, f"{name}: this GPU has no bfloat16, so float16 is used"
    return asked, None


def precision(weights: str | torch.dtype, device: torch.device | str, *, autocast: str | torch.dtype | None = None,
              bf16_supported: bool | None = None) -> Precision:
    """The one weights-dtype rule, from the config's dtype key(s) and the device.

    ``weights``: the config's ``torch_dtype`` or, for the scripts that have only ``amp_dtype`` (Task 1),
    that; ``autocast``: a separate ``amp_dtype`` (Task 3 training), else the same as the weights. On the
    CPU everything runs in float32. On a GPU half precision stays half: float16 becomes bfloat16 where
    the GPU has it (same speed, no overflow), bfloat16 becomes float16 where it has not, each said in
    ``note``; float32 stays float32.
    """
    cuda = torch.device(device).type == "cuda"
    if bf16_supported is None:
        bf16_supported = cuda and torch.cuda.is_bf16_supported()
    weights_dtype, note = _on_device(weights, cuda, bf16_supported)
    autocast_dtype, autocast_note = (_on_device(autocast, cuda, bf16_supported) if autocast is not None
                                     else (weights_dtype, None))
    notes = [n for n in (note, autocast_note) if n]
    return Precision(weights_dtype, AMP_NAMES[autocast_dtype], "; ".join(notes) or None)
