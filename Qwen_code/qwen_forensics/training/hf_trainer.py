"""The user's ``training_args`` as Hugging Face ``TrainingArguments`` of the installed transformers.

Task 2 trains with ``Trainer`` and takes ``training_args`` as the user wrote them (the seed's keys
predate transformers 5); this module translates renamed keys, relocates paths like every other
config path, fits mixed precision to the hardware and records what was used.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate.utils import send_to_device

from qwen_forensics.config.dtypes import precision
from qwen_forensics.config.loading import ConfigError, config_dict, relocate_path
from qwen_forensics.prompts import PromptSetup
from qwen_forensics.training.loop import warm_up
from qwen_forensics.training.memory import preflight
from qwen_forensics.training.runtime import autocast

_PATH_ARGS = ("output_dir", "logging_dir", "resume_from_checkpoint")

# TrainingArguments keys that transformers renamed; used only when the installed version lacks the old name.
_RENAMED_ARGS = {"warmup_ratio": "warmup_steps", "evaluation_strategy": "eval_strategy", "no_cuda": "use_cpu"}

# Keys transformers 5 dropped that no longer change anything.
_OBSOLETE_ARGS = {
    "logging_dir": "transformers 5 has no logging_dir (TensorBoard reads $TENSORBOARD_LOGGING_DIR)",
    "overwrite_output_dir": "transformers 5 always writes into output_dir",
    "save_safetensors": "transformers 5 always saves safetensors",
}


def _adapt_to_installed(args: dict, known: set[str]) -> list[str]:
    """Translate keys the installed transformers renamed (the seed's config predates v5); returns notes.

    ``warmup_ratio`` became a float ``warmup_steps`` in [0, 1) with the same meaning.
    """
    notes = []
    for old, new in _RENAMED_ARGS.items():
        if old in args and old not in known:
            if new in args:
                raise ConfigError(f"training_args has both {old!r} and {new!r}; this transformers only knows "
                                  f"{new!r}: keep one")
            args[new] = args.pop(old)
            if old == "warmup_ratio":
                # A float warmup_steps below 1 reads as a step count; say that it still is a fraction.
                notes.append(f"training_args.warmup_ratio {args[new]!r} is passed as warmup_steps={args[new]!r}: "
                             f"this transformers version took warmup_ratio's place in warmup_steps, where a value "
                             f"below 1 is a fraction of the training steps, so the warm-up is still {args[new]:.0%} "
                             f"of them")
            else:
                notes.append(f"training_args.{old} -> {new}={args[new]!r} (renamed in this transformers version)")
    for old, why in _OBSOLETE_ARGS.items():
        if old in args and old not in known:
            args.pop(old)
            notes.append(f"training_args.{old} dropped: {why}")
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise ConfigError(f"training_args has keys this transformers' TrainingArguments does not know: {unknown}; "
                          "see the TrainingArguments documentation of the installed version")
    return notes


def choose_precision(args: dict, *, cuda: bool, bf16_supported: bool) -> list[str]:
    """Make ``bf16`` / ``fp16`` in ``args`` follow the one precision rule (``config.precision``), which
    also picks the weights' dtype; returns notes.

    - no CUDA: both off (every task runs float32 on CPU; transformers refuses bf16 there);
    - ``fp16`` (the seed's ``fp16: true``) on a GPU with bf16: bf16, which has fp16's speed without its
      overflow, and matches the bfloat16 weights the rule loads there;
    - ``bf16`` on a GPU without bf16 support: fp16 instead;
    - both set: an error, as in transformers.
    """
    if args.get("bf16") and args.get("fp16"):
        raise ConfigError("training_args sets both bf16 and fp16; keep one")
    asked = "fp16" if args.get("fp16") else "bf16" if args.get("bf16") else None
    if asked is None:
        return []
    if not cuda:
        args[asked] = False
        return [f"training_args.{asked} -> false: no CUDA device, the CPU run stays in float32"]
    used = precision(asked, "cuda", bf16_supported=bf16_supported).autocast
    if used == asked:
        return []
    args[asked], args[used] = False, True
    return [f"training_args.{asked} -> {used}: " + ("this GPU supports bf16, which runs as fast as fp16 without its "
                                                     "overflow" if used == "bf16" else "this GPU has no bf16 support")]


def trainer_arguments(training_args: Mapping[str, Any], root: str | None,
                      out_dir: Path | None) -> tuple[dict, list[str]]:
    """The user's ``training_args`` as written, with the few adjustments the recipe needs; returns
    (keyword arguments for ``TrainingArguments`` plus ``resume_from_checkpoint``, notes to print).

    - keys the installed transformers renamed are translated (``warmup_ratio`` and friends);
    - paths (``output_dir``, ``logging_dir``, a ``resume_from_checkpoint`` folder) are relocated
      like every other config path (``--root``); relative ones are inside ``out_dir``;
    - ``remove_unused_columns`` must be false: the dataset yields images, not model columns;
    - gradient checkpointing without explicit kwargs gets ``use_reentrant: false``, which keeps the
      vision LoRA gradients whatever the transformers version's default;
    - mixed precision follows :func:`choose_precision` on this machine's GPU (or its absence);
    - batches (which the Trainer pins) go to the GPU without the host waiting for the copy
      (``accelerator_config.non_blocking``, unless the config sets it).
    """
    from transformers import TrainingArguments

    args = json.loads(json.dumps(dict(training_args)))
    notes = _adapt_to_installed(args, {f.name for f in fields(TrainingArguments)})
    cuda = torch.cuda.is_available()
    notes += choose_precision(args, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    if not isinstance(args.get("output_dir"), str) or not args["output_dir"]:
        raise ConfigError("training_args.output_dir is required (the Trainer's checkpoint folder)")
    for key in _PATH_ARGS:
        if isinstance(args.get(key), str):
            args[key] = relocate_path(args[key], root, out_dir)
    if args.get("remove_unused_columns", False):
        raise ConfigError("training_args.remove_unused_columns must be false: the collator turns images into model "
                          "inputs, so the Trainer must pass the dataset items through untouched")
    args["remove_unused_columns"] = False
    if not cuda:
        # Pinned memory only helps a copy to a GPU; without one torch warns about it on every loader.
        args.setdefault("dataloader_pin_memory", False)
    # The PEFT wrapper's forward hides the model's signature, from which Trainer would infer the label
    # key; without it an evaluation set would report no eval_loss.
    args.setdefault("label_names", ["labels"])
    accelerator_config = args.get("accelerator_config")
    if accelerator_config is None or isinstance(accelerator_config, dict):
        args["accelerator_config"] = {"non_blocking": True, **(accelerator_config or {})}
    checkpointing = args.get("gradient_checkpointing") or args.get("activation_checkpointing")
    if checkpointing and not (args.get("gradient_checkpointing_kwargs") or args.get("activation_checkpointing_kwargs")):
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args, notes


def resolved_training_config(cfg, setup: PromptSetup, training_args: Mapping[str, Any]) -> dict:
    """What LORA.py writes next to the adapter: the config plus the prompt setup it trained with."""
    out = config_dict(cfg)
    out["training_args"] = dict(training_args)
    out.update(setup.record())
    return out


def trainer_loss(trainer):
    """The Trainer's loss of one collated batch (moved to its device) under the autocast its accelerator
    will use, as ``{"total": loss}``: the step the warm-up and the memory check run before ``train()``."""
    args = trainer.args
    amp = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"

    def loss(batch) -> dict:
        trainer.model.train()
        with autocast(args.device, amp):
            return {"total": trainer.compute_loss(trainer.model, send_to_device(batch, args.device))}

    return loss


def preflight_trainer(trainer, planned_gib: float | None, say=print) -> None:
    """``memory.preflight`` for Task 2's Trainer (CUDA only): its batch and accumulation keys are the
    ``training_args`` the user wrote."""
    args = trainer.args
    preflight(trainer.accelerator, trainer.model, trainer.train_dataset, trainer.data_collator, trainer_loss(trainer),
              batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
              planned_gib=planned_gib, batch_key="training_args.per_device_train_batch_size",
              accum_key="training_args.gradient_accumulation_steps",
              other_keys="training_args.gradient_checkpointing true (activations recomputed in the backward)", say=say)


def warm_up_trainer(trainer) -> float:
    """One throwaway forward and backward on the training set's first batch, before ``trainer.train()``;
    returns its seconds (``training.warm_up``: random number generators restored, gradients cleared).

    The first step on a machine compiles the fused kernels and lets cuBLAS/cuDNN pick kernels for
    these shapes; the Trainer times its whole loop, so without this that start-up would be folded
    into ``train_samples_per_second``. The batch is collated here from the dataset (the Trainer's
    own loader only exists inside ``train()``) and run under the autocast the Trainer's accelerator
    will use.
    """
    args = trainer.args
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(min(args.per_device_train_batch_size, len(dataset)))])
    loss = trainer_loss(trainer)
    return warm_up(trainer.accelerator, trainer.model, lambda: loss(batch)["total"].backward())
