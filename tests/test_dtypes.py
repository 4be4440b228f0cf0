"""The one weights-dtype rule: what each script loads its weights as, from its config and the device."""

from __future__ import annotations

import pytest
import torch

from qwen_forensics.config import precision
from scripts import load_script

pytestmark = pytest.mark.usefixtures("single_thread")


class _Loaded(Exception):
    """Raised by the stand-in loader once it has seen the dtype: nothing after it needs to run."""


class CudaLooking:
    """A CPU accelerator that reports a CUDA device, so a script takes its GPU branch up to the weights load."""

    device = torch.device("cuda")

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("bf16_supported, expected", [(False, torch.float16), (True, torch.bfloat16)])
def test_task1_fp16_loads_half_weights_on_a_gpu(tiny_root, tmp_path, monkeypatch, bf16_supported, expected):
    """lora_train.py with amp_dtype "fp16" on a GPU: fp16 weights, or bf16 where the GPU has it (it used to
    load float32 weights, with fp16 autocast over them)."""
    script = load_script("lora_train")
    # The script imports these inside main (after its config): patch where they are defined.
    from qwen_forensics.model import loader
    from qwen_forensics.training import runtime
    make = runtime.make_accelerator
    monkeypatch.setattr(runtime, "make_accelerator", lambda *a, **k: CudaLooking(make(*a, **k)))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    seen = {}

    def load_vision_tower(path, dtype, device=None, fast_paths=True):
        seen["dtype"] = dtype
        raise _Loaded

    monkeypatch.setattr(loader, "load_vision_tower", load_vision_tower)
    argv = ["--root", str(tiny_root), "--set", f"out_dir={tmp_path}", "--set", "amp_dtype=fp16",
            "--set", "num_workers=0", "--set", "ann_val=null", "--set", "image_size=112"]
    with pytest.raises(_Loaded):
        script.main(argv)
    assert seen["dtype"] == expected


@pytest.mark.parametrize("weights, autocast, device, bf16_ok, expected", [
    ("bf16", None, "cpu", False, (torch.float32, "fp32", False)),
    ("float16", None, "cpu", False, (torch.float32, "fp32", False)),
    ("bf16", None, "cuda", True, (torch.bfloat16, "bf16", False)),
    ("fp16", None, "cuda", True, (torch.bfloat16, "bf16", True)),
    ("fp16", None, "cuda", False, (torch.float16, "fp16", False)),
    ("bfloat16", None, "cuda", False, (torch.float16, "fp16", True)),
    ("fp32", None, "cuda", True, (torch.float32, "fp32", False)),
    ("bfloat16", "fp32", "cuda", True, (torch.bfloat16, "fp32", False)),
    ("bfloat16", "fp16", "cuda", True, (torch.bfloat16, "bf16", True)),
])
def test_one_rule_for_weights_and_autocast(weights, autocast, device, bf16_ok, expected):
    got = precision(weights, device, autocast=autocast, bf16_supported=bf16_ok)
    assert (got.weights, got.autocast, got.note is not None) == expected
