"""The one table of dtype names: config strings ("bfloat16", "bf16", "float32", ...) to torch dtypes,
and the autocast names ("bf16" / "fp16" / "fp32") the training and evaluation loops take."""

from __future__ import annotations

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
