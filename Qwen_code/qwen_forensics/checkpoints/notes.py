"""What an evaluation config repeats from training, checked against the checkpoint: the
checkpoint's own settings are used, and a differing repeated value is reported."""

from __future__ import annotations

import re
from pathlib import Path

from peft.tuners.lora import LoraLayer
from torch import nn

from qwen_forensics.model.hybrid import HybridSpec
from qwen_forensics.model.lora import hybrid_target_spec
from qwen_forensics.model.lora_targets import resolve_targets_with_notes

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


SEED_LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_layers")


def check_seed_lora_keys(cfg, visual: nn.Module, ckpt_dir: str | Path) -> list[str]:
    """The seed's evaluation configs repeat the LoRA settings; the adapter's own are what is loaded.

    The earlier scripts used these keys only as fallbacks for checkpoints that did not record
    their settings; every checkpoint here records them, so a differing value changes nothing. It
    is reported (returned as notes) because it usually means the config was written for another run.
    """
    lora_config = visual.peft_config["default"]
    blocks = sorted({int(m.group(1)) for name, module in visual.named_modules()
                     if isinstance(module, LoraLayer) and (m := _BLOCK_INDEX.search(name))})
    found = {"lora_r": lora_config.r, "lora_alpha": lora_config.lora_alpha, "lora_dropout": lora_config.lora_dropout,
             "lora_target_layers": blocks}
    notes = []
    for key in SEED_LORA_KEYS:
        given = getattr(cfg, key)
        if given is not None and (sorted(given) if key == "lora_target_layers" else given) != found[key]:
            notes.append(f"config {key}={given!r} but the checkpoint {ckpt_dir} was trained with {found[key]!r}; "
                         "the checkpoint's setting is used")
    return notes


def seed_key_notes(cfg, trained: HybridSpec) -> list[str]:
    """The seed's eval config repeats training settings; the checkpoint's are what is loaded.

    A repeated value that differs, and answer words other than the trained ones (reading another
    token's logit gives a meaningless AUROC, SPEC 6.3), are reported; the trained values are used.
    """
    notes = []
    for key, value, saved in (("visual_layers", cfg.visual_layers, trained.visual_layers),
                              ("fusion_tokens", cfg.fusion_tokens, trained.fusion_tokens)):
        if value is not None and value != saved:
            notes.append(f"config {key}={value} but {cfg.fusion_checkpoint} was trained with {saved}; the "
                         "checkpoint's value is used")
    words = {"fake": [cfg.fake_token, cfg.target_text.fake if cfg.target_text else None],
             "real": [cfg.real_token, cfg.target_text.real if cfg.target_text else None]}
    for label, asked in words.items():
        saved = trained.fake_word if label == "fake" else trained.real_word
        for word in asked:
            if word is not None and word != saved:
                notes.append(f"{label} answer word {word!r} is not the trained one ({saved!r}); the trained word "
                             "is read")
    if cfg.fusion_hidden_dropout is not None:
        notes.append("fusion_hidden_dropout has no effect at evaluation (dropout is off)")
    return notes


def lora_config_notes(base, lora_cfg, trained) -> list[str]:
    """Compare the eval config's ``lora`` block with the checkpoint's recorded LoRA targets."""
    wanted, notes = resolve_targets_with_notes(base, hybrid_target_spec(lora_cfg))
    wanted = sorted(n for names in wanted.values() for n in names)
    saved = sorted(n for names in trained.lora_targets.values() for n in names)
    if wanted != saved:
        notes.append(f"the config's lora block names {len(wanted)} target modules, the checkpoint has {len(saved)} "
                     f"({len(set(wanted) - set(saved))} only in the config, {len(set(saved) - set(wanted))} only in "
                     "the checkpoint); the checkpoint's adapter is loaded")
    return notes
