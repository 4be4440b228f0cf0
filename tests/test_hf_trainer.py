"""``training.hf_trainer``: the user's ``training_args`` as this transformers' ``TrainingArguments`` (renamed
keys, relocated paths, the keys the recipe needs) and mixed precision fitted to the hardware."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainingArguments

from qwen_forensics.config import ConfigError
from qwen_forensics.training import hf_trainer
from qwen_forensics.training.hf_trainer import trainer_arguments
from scripts import CODE


def test_trainer_arguments_relocate_and_keep_vision_gradients(tmp_path, monkeypatch):
    shipped = json.loads((CODE / "task2_lm_lora" / "config_lora_trainer.json").read_text())
    with monkeypatch.context() as gpu:
        # Planned as on a bf16-capable GPU (only the two queries are faked; nothing touches CUDA).
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        gpu.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        args, notes = trainer_arguments(shipped["training_args"], str(tmp_path), None)
    assert args["output_dir"] == str(tmp_path.resolve() / "task2_lm_lora/training/checkpoints")
    assert args["bf16"] is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu, cpu_notes = trainer_arguments(shipped["training_args"], None, None)
    assert on_cpu["bf16"] is False and any("bf16 -> false" in note for note in cpu_notes)
    assert args["gradient_checkpointing"] is False and "gradient_checkpointing_kwargs" not in args
    checkpointed, _ = trainer_arguments({**shipped["training_args"], "gradient_checkpointing": True}, None, None)
    assert checkpointed["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["remove_unused_columns"] is False
    kept = {k: v for k, v in shipped["training_args"].items() if k not in ("output_dir", "warmup_ratio", "label_names")}
    assert {k: args[k] for k in kept} == kept
    assert args.get("warmup_ratio", args.get("warmup_steps")) == 0.05
    TrainingArguments(**on_cpu)
    reentrant = {**shipped["training_args"], "gradient_checkpointing": True,
                 "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    explicit, _ = trainer_arguments(reentrant, None, None)
    assert explicit["gradient_checkpointing_kwargs"] == {"use_reentrant": True}
    assert trainer_arguments({"output_dir": "ckpt"}, None, tmp_path)[0]["output_dir"] == str(tmp_path / "ckpt")

    with pytest.raises(ConfigError, match="remove_unused_columns must be false"):
        trainer_arguments({"output_dir": "x", "remove_unused_columns": True}, None, None)
    with pytest.raises(ConfigError, match="output_dir is required"):
        trainer_arguments({}, None, None)
    with pytest.raises(ConfigError, match=r"does not know: \['learning_rat'\]"):
        trainer_arguments({"output_dir": "x", "learning_rat": 1e-4}, None, None)


@pytest.mark.parametrize("given, cuda, bf16_ok, expected", [
    ({"fp16": True}, False, False, {"fp16": False}),
    ({"bf16": True}, False, False, {"bf16": False}),
    ({"fp16": True}, True, True, {"fp16": False, "bf16": True}),
    ({"fp16": True}, True, False, {"fp16": True}),
    ({"bf16": True}, True, False, {"bf16": False, "fp16": True}),
    ({"bf16": True}, True, True, {"bf16": True}),
    ({}, True, True, {}),
])
def test_precision_follows_hardware_and_weights(given, cuda, bf16_ok, expected):
    """The seed's trainer config asks fp16: bf16 where the GPU has it (as the weights then are), float32 on CPU."""
    args = dict(given)
    notes = hf_trainer.choose_precision(args, cuda=cuda, bf16_supported=bf16_ok)
    assert args == expected
    assert bool(notes) == (args != given)
    with pytest.raises(ValueError, match="both bf16 and fp16"):
        hf_trainer.choose_precision({"bf16": True, "fp16": True}, cuda=cuda, bf16_supported=bf16_ok)
