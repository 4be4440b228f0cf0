"""Will the training fit the GPU? Measured before the first step, not discovered mid-epoch.

Activation memory grows linearly with the batch, the rest (weights, LoRA and its optimizer state, the
heads, the allocator's blocks) does not. :func:`probe_peak` runs the recipe's own forward and backward
on one and on two images of the training set and reads the peak memory of each, which gives the two
lines of that model (:class:`MemoryLine`); :func:`check_fits` compares the configured batch with the
card (or with ``gpu_memory_gib``, to plan for a smaller card) and, when it does not fit, stops before
the first step naming the largest batch that does, with the gradient accumulation that keeps the
effective batch, and the other keys that lower the peak. The probe runs once, a few seconds, on CUDA only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from accelerate.utils import send_to_device

from qwen_forensics.training.loop import warm_up

# Of the card's memory, what a run may plan to use: the allocator keeps cached blocks and the CUDA
# context and the libraries' workspaces sit outside what PyTorch counts.
USABLE = 0.92
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryLine:
    """Peak GiB as a function of the images per step: ``fixed + per_image * images``."""
    fixed: float
    per_image: float

    def peak(self, images: int) -> float:
        return self.fixed + self.per_image * images

    def largest_batch(self, budget: float) -> int:
        """The most images per step whose peak stays within ``budget`` GiB (0 when not even one fits)."""
        if self.per_image <= 0:
            return 10 ** 6
        return max(0, math.floor((budget - self.fixed) / self.per_image))


def probe_peak(step: Callable[[int], None], device: torch.device, sizes: Sequence[int] = (1, 2)) -> MemoryLine:
    """Run ``step(n)`` (forward and backward on ``n`` images, gradients cleared after) for each size and
    fit the line through the two peaks."""
    peaks = []
    for n in sizes:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) / GIB)
    (n1, n2), (p1, p2) = sizes, peaks
    per_image = max(0.0, (p2 - p1) / (n2 - n1))
    return MemoryLine(p1 - per_image * n1, per_image)


def card_gib(device: torch.device) -> float:
    return torch.cuda.get_device_properties(device).total_memory / GIB


@dataclass(frozen=True)
class FitAdvice:
    """The configured step against the memory it may use; ``message`` says what to change (None: it fits)."""
    estimated: float
    budget: float
    message: str | None


def check_fits(line: MemoryLine, batch_size: int, grad_accum: int, budget_gib: float, *, batch_key: str,
               accum_key: str, other_keys: str, source: str) -> FitAdvice:
    """Whether ``batch_size`` images per step fit ``budget_gib`` (already the usable part); if not, the
    message names the estimate, the largest batch that fits with the accumulation that keeps the
    effective batch (``batch_key`` / ``accum_key`` as the config spells them) and ``other_keys``
    (what else lowers the peak). ``source``: where the budget comes from, for the message."""
    estimated = line.peak(batch_size)
    if estimated <= budget_gib:
        return FitAdvice(estimated, budget_gib, None)
    fits = line.largest_batch(budget_gib)
    effective = batch_size * grad_accum
    if fits >= 1:
        accum = math.ceil(effective / fits)
        batch = math.ceil(effective / accum)
        fix = (f"set {batch_key} {batch} and {accum_key} {accum} (the same {effective} images per optimizer step, "
               f"estimated {line.peak(batch):.1f} GiB)")
    else:
        fix = "not even one image per step fits"
    message = (f"stopped before the first step: {batch_key} {batch_size} needs an estimated {estimated:.1f} GiB of GPU "
               f"memory, more than the {budget_gib:.1f} GiB usable of {source} (measured: {line.fixed:.1f} GiB fixed + "
               f"{line.per_image:.2f} GiB per image). To fit: {fix}; or {other_keys}.")
    return FitAdvice(estimated, budget_gib, message)


def budget_gib(device: torch.device, planned: float | None) -> tuple[float, str]:
    """The usable GiB of the card, or of ``planned`` GiB (the config's ``gpu_memory_gib``), and a label."""
    total = planned if planned is not None else card_gib(device)
    source = (f"the planned {planned:g} GiB card (gpu_memory_gib)" if planned is not None
              else f"this {torch.cuda.get_device_name(device)} ({total:.0f} GiB)")
    return total * USABLE, source


def preflight(accelerator, model: torch.nn.Module, dataset, collate: Callable, loss_fn: Callable[[dict], dict], *,
              batch_size: int, grad_accum: int, planned_gib: float | None, batch_key: str, accum_key: str,
              other_keys: str, say: Callable[[str], None] = print) -> MemoryLine | None:
    """The check the custom recipes run before their first step (CUDA only): ``loss_fn`` forward and
    backward, in training mode, on the first one and two images of ``dataset`` (``training.warm_up``:
    nothing survives; the model's mode is restored),
    the optimizer's two fp32 moments per trainable parameter added, then :func:`check_fits`; stops the
    run (``SystemExit``) with the advice when the configured batch does not fit."""
    if accelerator.device.type != "cuda":
        return None

    def step(n: int) -> None:
        batch = send_to_device(collate([dataset[i] for i in range(n)]), accelerator.device)
        warm_up(accelerator, model, lambda: loss_fn(batch)["total"].backward())

    # In training mode, as the loop runs: checkpointed layers (gradient_checkpointing, recompute_blocks) drop
    # their activations only when training, so a probe in eval mode overstates their peak (measured at 7B on an
    # H100: Task 3 batch 8 with checkpointing, 39.2 GiB estimated in eval mode against 21.6 GiB trained).
    was_training = model.training
    model.train()
    try:
        line = probe_peak(step, accelerator.device)
    finally:
        model.train(was_training)
    moments = 8 * sum(p.numel() for p in model.parameters() if p.requires_grad) / GIB
    line = MemoryLine(line.fixed + moments, line.per_image)
    budget, source = budget_gib(accelerator.device, planned_gib)
    advice = check_fits(line, batch_size, grad_accum, budget, batch_key=batch_key, accum_key=accum_key,
                        other_keys=other_keys, source=source)
    say(f"[memory] estimated peak {advice.estimated:.1f} GiB at {batch_key} {batch_size} ({line.fixed:.1f} GiB fixed + "
        f"{line.per_image:.2f} GiB per image; {budget:.1f} GiB usable of {source})")
    if advice.message:
        raise SystemExit(advice.message)
    return line
