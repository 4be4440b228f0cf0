"""LoRA target resolution by exact module path, per component (vision blocks, merger, LM layers).

The vision blocks and the LM layers both contain modules called ``mlp.gate_proj`` etc., so a
suffix such as ``gate_proj`` would hit both towers. Targets here are therefore full module paths
checked to exist and to be ``nn.Linear``, and ``model.lora.make_lora_config`` hands PEFT a regex
that full-matches exactly those paths and nothing else.

Components are located by class, not by attribute path, so the same code works on the full
``Qwen2_5_VLForConditionalGeneration`` (tower at ``model.visual``, LM at ``model.language_model``)
and on a bare vision tower (root ``""``), whatever the transformers version's nesting.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VisionTransformerPretrainedModel,
                                                                Qwen2_5_VLTextModel)

VISION_BLOCK_MODULES = ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

LM_LAYER_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# Configs may name modules by their last component; these tables expand them to exact paths
# within one block / layer (not a suffix match over the whole model).
VISION_MODULE_ALIASES = {
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}

LM_MODULE_ALIASES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}

COMPONENTS = ("visual", "merger", "vision_extra", "lm")


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('.')}.{name}" if prefix else name


def _unique_path(model: nn.Module, cls: type) -> str | None:
    paths = [name for name, module in model.named_modules() if isinstance(module, cls)]
    if len(paths) > 1:
        raise ValueError(f"expected at most one {cls.__name__} in the model, found {len(paths)} at {paths}")
    return paths[0] if paths else None


def locate_components(model: nn.Module) -> dict[str, str | None]:
    """Module paths of the vision tower and the language model inside ``model`` ("" = root, None = absent)."""
    return {
        "visual": _unique_path(model, Qwen2_5_VisionTransformerPretrainedModel),
        "language_model": _unique_path(model, Qwen2_5_VLTextModel),
    }


def _expand(modules: Sequence[str], aliases: Mapping[str, str], what: str) -> list[str]:
    if isinstance(modules, str):
        raise TypeError(f"{what} modules must be a list of names, got the string {modules!r}")
    expanded = [aliases.get(m, m) for m in modules]
    if not expanded:
        raise ValueError(f"no {what} modules given; use e.g. {list(aliases.values())}")
    duplicates = sorted({m for m in expanded if expanded.count(m) > 1})
    if duplicates:
        raise ValueError(f"{what} modules listed twice: {duplicates}")
    return expanded


def _check_indices(indices: Sequence[int], count: int, what: str) -> list[int]:
    if isinstance(indices, str) or not indices:
        raise ValueError(f"{what} indices must be a non-empty list of integers, got {indices!r}")
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
    if bad:
        raise ValueError(
            f"invalid {what} indices {bad}: the model has {count} {what}s, valid indices are 0..{count - 1}"
        )
    duplicates = sorted({i for i in indices if list(indices).count(i) > 1})
    if duplicates:
        raise ValueError(f"{what} indices listed twice: {duplicates}")
    return list(indices)


def _linear_paths(root: nn.Module, relative: list[str], prefix: str) -> list[str]:
    for rel in relative:
        try:
            module = root.get_submodule(rel)
        except AttributeError:
            raise ValueError(f"module {_join(prefix, rel)!r} does not exist in the model") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"module {_join(prefix, rel)!r} is a {type(module).__name__}, not nn.Linear "
                "(is a LoRA adapter already injected?)"
            )
    return [_join(prefix, rel) for rel in relative]


def _layer_list(parent: nn.Module, attr: str, what: str) -> nn.ModuleList:
    layers = getattr(parent, attr, None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(parent).__name__} has no '{attr}' ModuleList: it is not a Qwen2.5-VL {what}")
    return layers


def vision_block_targets(
    visual_module: nn.Module,
    blocks: Sequence[int],
    modules: Sequence[str] = VISION_BLOCK_MODULES,
    prefix: str = "",
) -> list[str]:
    """Full names of ``modules`` (e.g. ``attn.qkv``) in vision ``blocks``; ``prefix`` = the tower's path."""
    depth = len(_layer_list(visual_module, "blocks", "vision tower"))
    block_ids = _check_indices(blocks, depth, "vision block")
    names = _expand(modules, VISION_MODULE_ALIASES, "vision block")
    return _linear_paths(visual_module, [f"blocks.{b}.{m}" for b in block_ids for m in names], prefix)


def merger_targets(visual_module: nn.Module, prefix: str = "") -> list[str]:
    """The linear layers of the patch merger's MLP (``merger.mlp.0``, ``merger.mlp.2``)."""
    merger = getattr(visual_module, "merger", None)
    mlp = getattr(merger, "mlp", None)
    if not isinstance(mlp, nn.Module):
        raise ValueError(f"{type(visual_module).__name__} has no merger.mlp: it is not a Qwen2.5-VL vision tower")
    relative = [f"merger.mlp.{name}" for name, m in mlp.named_children() if isinstance(m, nn.Linear)]
    if not relative:
        raise ValueError("the merger MLP has no nn.Linear layers (is a LoRA adapter already injected?)")
    return [_join(prefix, rel) for rel in relative]

# Prefixes under which configs name modules of one component: the released checkpoints' names
# ("visual.merger.mlp.0"), transformers 5's ("model.visual..."), or names relative to the component.
VISION_NAME_PREFIXES = ("model.visual.", "visual.")

LM_NAME_PREFIXES = ("model.language_model.", "language_model.")


def _strip_prefix(name: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def vision_module_targets(visual_module: nn.Module, paths: Sequence[str], prefix: str = "") -> list[str]:
    """Exact module paths inside the vision tower (Task 2's ``lora_extra_modules``, e.g. ``merger.mlp.0``;
    a ``visual.`` / ``model.visual.`` prefix is accepted)."""
    if isinstance(paths, str):
        raise TypeError(f"vision module paths must be a list, got the string {paths!r}")
    return _linear_paths(visual_module, [_strip_prefix(p, VISION_NAME_PREFIXES) for p in paths], prefix)


def lm_module_targets(language_model: nn.Module, paths: Sequence[str], prefix: str = "") -> list[str]:
    """Exact module paths inside the language model (``layers.24.self_attn.q_proj``; a
    ``language_model.`` / ``model.language_model.`` prefix is accepted)."""
    if isinstance(paths, str):
        raise TypeError(f"LM module paths must be a list, got the string {paths!r}")
    return _linear_paths(language_model, [_strip_prefix(p, LM_NAME_PREFIXES) for p in paths], prefix)


def pattern_targets(component: nn.Module, patterns: Sequence[str], canonical: str, prefix: str = ""
                    ) -> tuple[list[str], list[str]]:
    """The earlier scripts' substring patterns: every ``nn.Linear`` whose name contains a pattern.

    A name is tried as ``<canonical>.<path>`` (``visual.blocks.7.attn.qkv``, the released
    checkpoints' naming) and as its path in the model (``model.visual.blocks.7.attn.qkv``).
    Returns (matched full names, patterns that matched nothing).
    """
    if isinstance(patterns, str):
        raise TypeError(f"patterns must be a list, got the string {patterns!r}")
    matched, unmatched = [], []
    for pattern in patterns:
        hits = [_join(prefix, rel) for rel, module in component.named_modules()
                if rel and isinstance(module, nn.Linear) and (pattern in f"{canonical}.{rel}"
                                                              or pattern in _join(prefix, rel))]
        if not hits:
            unmatched.append(pattern)
        matched.extend(h for h in hits if h not in matched)
    return matched, unmatched


def lm_targets(
    language_model: nn.Module,
    layers: Sequence[int] | Literal["all"],
    modules: Sequence[str] = LM_LAYER_MODULES,
    prefix: str = "",
) -> list[str]:
    """Full names of ``modules`` (e.g. ``self_attn.q_proj``) in decoder ``layers`` (or ``"all"``)."""
    count = len(_layer_list(language_model, "layers", "language model"))
    if layers == "all":
        layer_ids = list(range(count))
    else:
        layer_ids = _check_indices(layers, count, "LM layer")
    names = _expand(modules, LM_MODULE_ALIASES, "LM layer")
    return _linear_paths(language_model, [f"layers.{i}.{m}" for i in layer_ids for m in names], prefix)


@dataclass(frozen=True)
class LoraTargetSpec:
    """Which components get LoRA. ``None`` switches a component off.

    vision_blocks: ViT block indices (Task 1 ``lora_target_layers``, Task 2 ``lora_target_blocks``,
    Task 3 ``lora.visual.blocks``); merger: LoRA on the merger MLP (Task 3 ``lora.merge``);
    vision_extra_modules: further exact paths inside the tower (Task 2 ``lora_extra_modules``);
    vision_patterns / lm_patterns: the earlier scripts' substring patterns (``extra_patterns``);
    lm_layers: decoder layer indices or ``"all"``; lm_extra_modules: exact LM module paths.
    """

    vision_blocks: Sequence[int] | None = None
    vision_modules: Sequence[str] = VISION_BLOCK_MODULES
    merger: bool = False
    vision_extra_modules: Sequence[str] = ()
    vision_patterns: Sequence[str] = ()
    lm_layers: Sequence[int] | Literal["all"] | None = None
    lm_modules: Sequence[str] = LM_LAYER_MODULES
    lm_extra_modules: Sequence[str] = ()
    lm_patterns: Sequence[str] = ()


def resolve_targets(model: nn.Module, spec: LoraTargetSpec) -> dict[str, list[str]]:
    """Per component (``COMPONENTS``) the full module names, relative to ``model`` (see
    :func:`resolve_targets_with_notes`, which also reports patterns that matched nothing)."""
    return resolve_targets_with_notes(model, spec)[0]


def resolve_targets_with_notes(model: nn.Module, spec: LoraTargetSpec) -> tuple[dict[str, list[str]], list[str]]:
    """Per component the full module names relative to ``model``, and notes for the log.

    ``model`` is the full Qwen2.5-VL model or a bare vision tower; disabled components map to [].
    A module named twice explicitly is an error; a pattern match already targeted is dropped
    (the earlier scripts collected targets in a set), and a pattern that matches nothing is
    reported in the notes rather than silently adding nothing.
    """
    paths = locate_components(model)
    wants_visual = (spec.vision_blocks is not None or spec.merger or bool(spec.vision_extra_modules)
                    or bool(spec.vision_patterns))
    wants_lm = spec.lm_layers is not None or bool(spec.lm_extra_modules) or bool(spec.lm_patterns)
    if wants_visual and paths["visual"] is None:
        raise ValueError(f"vision LoRA requested but {type(model).__name__} contains no Qwen2.5-VL vision tower")
    if wants_lm and paths["language_model"] is None:
        raise ValueError(
            f"LM LoRA requested but {type(model).__name__} contains no language model "
            "(a bare vision tower cannot take LM targets)"
        )
    targets: dict[str, list[str]] = {c: [] for c in COMPONENTS}
    unmatched: dict[str, list[str]] = {}
    if wants_visual:
        visual = model.get_submodule(paths["visual"])
        if spec.vision_blocks is not None:
            targets["visual"] = vision_block_targets(visual, spec.vision_blocks, spec.vision_modules, paths["visual"])
        if spec.merger:
            targets["merger"] = merger_targets(visual, paths["visual"])
        if spec.vision_extra_modules:
            targets["vision_extra"] = vision_module_targets(visual, spec.vision_extra_modules, paths["visual"])
        if spec.vision_patterns:
            hits, unmatched["vision"] = pattern_targets(visual, spec.vision_patterns, "visual", paths["visual"])
            taken = set(_flatten(targets))
            targets["vision_extra"] += [h for h in hits if h not in taken]
    if wants_lm:
        lm = model.get_submodule(paths["language_model"])
        if spec.lm_layers is not None:
            targets["lm"] = lm_targets(lm, spec.lm_layers, spec.lm_modules, paths["language_model"])
        if spec.lm_extra_modules:
            targets["lm"] += lm_module_targets(lm, spec.lm_extra_modules, paths["language_model"])
        if spec.lm_patterns:
            hits, unmatched["lm"] = pattern_targets(lm, spec.lm_patterns, "language_model", paths["language_model"])
            taken = set(_flatten(targets))
            targets["lm"] += [h for h in hits if h not in taken]
    _flatten(targets)
    notes = [f"{component} LoRA pattern {pattern!r} matches no linear module of this model, so it adds no "
             f"target (the earlier scripts' substring match found nothing there either)"
             for component, patterns in unmatched.items() for pattern in patterns]
    return targets, notes


def _flatten(targets: Mapping[str, Sequence[str]] | Sequence[str]) -> list[str]:
    names = [n for group in targets.values() for n in group] if isinstance(targets, Mapping) else list(targets)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"LoRA targets listed twice: {duplicates}")
    return names


def exact_target_regex(names: Sequence[str]) -> str:
    """A regex that PEFT full-matches against module names: exactly ``names``, nothing else."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"

_GROUP = re.compile(r"^(.*\.(?:blocks|layers)\.\d+)\.(.+)$")


_PLACES = (("vision blocks", re.compile(r"(^|\.)blocks\.\d+\.")), ("merger", re.compile(r"(^|\.)merger\.")),
           ("language model", re.compile(r"(^|\.)layers\.\d+\.")))


def format_targets(targets: Mapping[str, Sequence[str]]) -> str:
    """Human-readable listing grouped by where the modules live (vision blocks, merger, language model,
    other), one line per block / layer, whichever option named them: Task 2's ``lora_extra_modules``
    naming the merger shows under "merger", never beside a "merger: off"."""
    names = [n for group in targets.values() for n in group]
    places: OrderedDict[str, list[str]] = OrderedDict((place, []) for place, _ in _PLACES)
    for name in names:
        place = next((p for p, pattern in _PLACES if pattern.search(name)), "other")
        places.setdefault(place, []).append(name)
    lines = [f"LoRA targets ({len(names)} modules):"]
    for place, found in places.items():
        if not found:
            lines.append(f"  {place}: none")
            continue
        lines.append(f"  {place} ({len(found)}):")
        groups: OrderedDict[str, list[str]] = OrderedDict()
        for name in found:
            match = _GROUP.match(name)
            parent, leaf = (match.group(1), match.group(2)) if match else name.rpartition(".")[::2]
            groups.setdefault(parent, []).append(leaf)
        lines.extend(f"    {parent}: {', '.join(leaves)}" for parent, leaves in groups.items())
    return "\n".join(lines)
