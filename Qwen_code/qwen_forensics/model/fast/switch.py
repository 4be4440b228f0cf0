"""The fast paths as a switch with a handle.

:func:`enable_fast_paths` replaces the ``forward`` of Qwen2.5-VL's modules (found by class name, the
table :data:`PATCHES`) with the implementations of ``window_attention`` and returns a
:class:`FastPaths` that knows every module it touched and can put each one back (:meth:`FastPaths.undo`).

Two guards keep a transformers or PEFT release we have not run from silently changing results or
speed:

- versions: the patches lean on transformers' module layout and on a PEFT LoRA layer's internals.
  Outside the tested range (:data:`TESTED`) nothing is patched and one line says that plain
  transformers runs instead;
- counts: a renamed class would match nothing and the model would quietly run the slow path.
  :meth:`FastPaths.check` compares the patched modules with what the model's config implies
  (:func:`expected_counts`) and fails naming the class that was not found.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from typing import Callable

from torch import nn
from transformers.activations import SiLUActivation

from qwen_forensics.model.fast.window_attention import (VisionInputs, attention_forward, lm_attention_forward,
                                                        mlp_forward, patch_embed_forward, patch_embed_is_linear,
                                                        rms_norm_forward, unpack_mlp)

# Newest minor release of each package the fast paths were run and compared against (inclusive).
TESTED = {"transformers": ("5.17", "5.25"), "peft": ("0.17", "0.21")}

TOWER_CLASS = "Qwen2_5_VisionTransformerPretrainedModel"
# kind -> the class names whose forward it replaces (the tower itself gets a pre-hook, not a forward).
PATCHES = {
    "attention": ("Qwen2_5_VLVisionAttention",),
    "patch_embed": ("Qwen2_5_VisionPatchEmbed",),
    "lm_attention": ("Qwen2_5_VLAttention",),
    "rms_norm": ("Qwen2_5_VLRMSNorm",),
    "mlp": ("Qwen2_5_VLMLP", "Qwen2MLP"),
}
KINDS = ("vision_inputs", *PATCHES)


def _minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def untested_versions() -> list[str]:
    """The installed packages outside :data:`TESTED`, as ``"transformers 5.30.0 (tested 5.17 to 5.25)"``."""
    found = []
    for package, (low, high) in TESTED.items():
        installed = version(package)
        if not _minor(low) <= _minor(installed) <= _minor(high):
            found.append(f"{package} {installed} (tested {low} to {high})")
    return found


@cache
def _say_untested(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class FastPaths:
    """What :func:`enable_fast_paths` switched in one model, per kind, and how to switch it back."""
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    skipped: str | None = None          # why nothing was patched (untested versions)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def enabled(self) -> bool:
        return self.skipped is None

    def undo(self) -> None:
        """Every patched module back to transformers' own forward (packed MLP weights back in their own
        storage); the model then computes exactly what plain transformers computes."""
        while self._undo:
            self._undo.pop()()
        self.counts = dict.fromkeys(KINDS, 0)

    def check(self, expected: dict[str, int]) -> None:
        """Fail when a kind patched fewer or more modules than the model's config implies."""
        if not self.enabled:
            return
        wrong = {kind: (self.counts[kind], n) for kind, n in expected.items() if self.counts[kind] != n}
        if wrong:
            names = {"vision_inputs": (TOWER_CLASS,), **PATCHES}
            listing = "; ".join(f"{kind}: {got} of {n} expected ({' / '.join(names[kind])})"
                                for kind, (got, n) in wrong.items())
            raise RuntimeError(f"fast paths: the model does not have the modules they replace ({listing}). This "
                               f"transformers release ({version('transformers')}) renamed or restructured them; set "
                               "fast_paths: false in the config to run plain transformers")


def expected_counts(model: nn.Module, attn_implementation: str) -> dict[str, int]:
    """The modules of each kind that a model built from its config has (a full Qwen2.5-VL, or its tower)."""
    config = model.config
    vision = getattr(config, "vision_config", config)
    text = getattr(config, "text_config", None)
    depth, layers = vision.depth, (text.num_hidden_layers if text is not None else 0)
    return {"vision_inputs": 1, "patch_embed": 1, "attention": depth if attn_implementation == "sdpa" else 0,
            "lm_attention": layers, "rms_norm": 2 * depth + 1 + (2 * layers + 1 if layers else 0),
            "mlp": depth + layers}


def _replace_forward(module: nn.Module, new: Callable, handle: FastPaths) -> None:
    had = "forward" in module.__dict__
    old = module.__dict__.get("forward")
    module.forward = types.MethodType(new, module)

    def restore() -> None:
        if had:
            module.forward = old
        else:
            del module.forward

    handle._undo.append(restore)


def _switch_tower(tower: nn.Module, handle: FastPaths) -> None:
    """The tower's grid-dependent index tensors built once per grid (pre-hook) and, under SDPA, every
    block's attention batched over equal windows."""
    plans: dict = {}
    hook = tower.register_forward_pre_hook(VisionInputs(tower, plans), with_kwargs=True)
    tower._fast_inputs = True

    def restore() -> None:
        hook.remove()
        del tower._fast_inputs

    handle._undo.append(restore)
    handle.counts["vision_inputs"] += 1
    for attention in tower.modules():
        if type(attention).__name__ in PATCHES["attention"] and attention.config._attn_implementation == "sdpa":
            attention._fast_plans = plans
            _replace_forward(attention, attention_forward, handle)
            handle._undo.append(lambda a=attention: a.__dict__.pop("_fast_plans", None))
            handle.counts["attention"] += 1


def enable_fast_paths(model: nn.Module) -> FastPaths:
    """Switch ``model`` (a vision tower, or the full model) to the fast paths; returns the handle.

    Vision attention is switched only for SDPA (eager keeps its kernels, flash-attention already runs
    all windows in one varlen call). RMSNorm and SiLU MLPs are switched everywhere; they fall back to
    the eager formula wherever the fused kernels do not apply. With an untested transformers or PEFT
    release nothing is switched and one line says so.
    """
    handle = FastPaths()
    untested = untested_versions()
    if untested:
        handle.skipped = f"fast paths off: {', '.join(untested)}; plain transformers runs instead"
        _say_untested(handle.skipped)
        return handle
    for module in model.modules():
        name = type(module).__name__
        if name == TOWER_CLASS and not getattr(module, "_fast_inputs", False):
            _switch_tower(module, handle)
        elif name in PATCHES["patch_embed"] and patch_embed_is_linear(module):
            _replace_forward(module, patch_embed_forward, handle)
            handle.counts["patch_embed"] += 1
        elif name in PATCHES["lm_attention"]:
            _replace_forward(module, lm_attention_forward, handle)
            handle.counts["lm_attention"] += 1
        elif name in PATCHES["rms_norm"]:
            _replace_forward(module, rms_norm_forward, handle)
            handle.counts["rms_norm"] += 1
        elif name in PATCHES["mlp"] and isinstance(module.act_fn, (SiLUActivation, nn.SiLU)):
            _replace_forward(module, mlp_forward, handle)
            handle._undo.append(lambda m=module: unpack_mlp(m))
            handle.counts["mlp"] += 1
    return handle
