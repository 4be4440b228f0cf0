"""Task 2 adapter folders (``LORA.py``): the prompt setup recorded next to the adapter, and the
evaluation setup derived from it."""

from __future__ import annotations

import os
from pathlib import Path

from qwen_forensics.checkpoints.tensors import read_resolved_config
from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME
from qwen_forensics.prompts import SETUP_RECORD_KEYS, PromptSetup

# Keys of the adapter's recorded config that fix what evaluation must feed the model.
SETUP_KEYS = tuple(SETUP_RECORD_KEYS.values())

ANSWER_FIELDS = ("fake_word", "real_word")


def adapter_setup(lora_path: str | os.PathLike) -> PromptSetup:
    """The prompt setup LORA.py trained with, read from the adapter folder's resolved_config.json."""
    saved = read_resolved_config(lora_path)
    missing = [k for k in SETUP_KEYS if k not in saved]
    if missing:
        raise ValueError(f"{Path(lora_path) / RESOLVED_CONFIG_NAME} lacks {missing}: the adapter was not "
                         "written by Task 2's LORA.py, which records the geometry, prompt and answer words it "
                         "trained with; point lora_path at a LORA.py adapter folder")
    return PromptSetup.from_record(saved)


def resolve_infer_setup(cfg, trained: PromptSetup) -> tuple[PromptSetup, list[str]]:
    """Evaluation setup and notes for the log: the config's explicit values, else the adapter's.

    The answer words are always the trained ones: reading another token's logit (" Fake" for
    "Fake", SPEC 6.3) gives a meaningless AUROC, so a configured word that differs is reported and
    replaced. A different prompt or geometry is allowed (to probe the model) but announced.
    """
    chosen, notes = {}, []
    for field, key in SETUP_RECORD_KEYS.items():
        value = getattr(cfg, key)
        trained_value = getattr(trained, field)
        if value is None or value == trained_value:
            chosen[field] = trained_value
        elif field in ANSWER_FIELDS:
            chosen[field] = trained_value
            notes.append(f"{key}={value!r} is not the answer word the adapter was trained with ({trained_value!r}); "
                         f"the trained word {trained_value!r} is read")
        else:
            chosen[field] = value
            notes.append(f"{key}={value!r} differs from the adapter's training value {trained_value!r}; the model is "
                         "evaluated on inputs it was not trained on")
    return PromptSetup(**chosen), notes
