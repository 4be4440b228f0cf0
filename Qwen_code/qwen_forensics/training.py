"""Loop plumbing shared by the custom training recipes (Task 1, Task 3): accelerate, seeds,
optimizer groups, schedule, autocast. The recipes themselves stay readable top to bottom."""

from __future__ import annotations

import csv
import functools
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.utils.checkpoint
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .checkpoint import RESOLVED_CONFIG_NAME
from .dtypes import resolve_dtype
from .model.hybrid import HybridModel
from .model.lora import trainable_base_parameters


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_accelerator(grad_accum: int, *, find_unused_parameters: bool = False) -> Accelerator:
    """One accelerator for single-process, ``accelerate launch`` and ``torchrun`` alike.

    Mixed precision is not delegated to accelerate: the recipes use :func:`autocast` so CPU runs
    stay in fp32 and GPU runs use the configured dtype, the same code path in both cases.
    """
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    # Batches from pinned memory (the recipes' loaders pin on CUDA) are copied without the host
    # waiting: a blocking copy of a 16-image batch (77 MB of pixels) would wait for the previous
    # step to finish and leave the GPU idle while it copies.
    return Accelerator(gradient_accumulation_steps=grad_accum, kwargs_handlers=kwargs,
                       dataloader_config=DataLoaderConfiguration(non_blocking=True))


def autocast(device: torch.device, amp_dtype: str, lora_cast=None):
    """bf16/fp16 autocast on CUDA; plain fp32 elsewhere (CPU autocast would only add noise here).

    ``lora_cast`` (a ``model.lora.LoraInputCast``): also skip PEFT's fp32 copy of LoRA inputs,
    which autocast makes redundant.
    """
    if device.type != "cuda" or amp_dtype == "fp32":
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(torch.autocast(device_type="cuda", dtype=resolve_dtype(amp_dtype)))
    if lora_cast is not None:
        stack.enter_context(lora_cast.off())
    return stack


def param_groups(groups: dict[str, tuple[list[torch.nn.Parameter], float]], weight_decay: float) -> list[dict]:
    """AdamW groups by name; norms, biases and 1-D gains get no weight decay."""
    out = []
    for name, (params, lr) in groups.items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            out.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            out.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not out:
        raise ValueError("no trainable parameters: check the LoRA targets and the heads")
    return out


def build_optimizer_and_schedule(groups: list[dict], *, total_steps: int, warmup_ratio: float):
    """AdamW (the fused single-kernel update when every parameter is already on the GPU) and a
    warm-up + cosine schedule."""
    fused = all(p.is_cuda for group in groups for p in group["params"])
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)
    warmup = int(math.ceil(warmup_ratio * total_steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return optimizer, scheduler


def optimizer_steps(num_batches: int, grad_accum: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps the run will take (the schedule's length)."""
    per_epoch = max(1, math.ceil(num_batches / grad_accum))
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def synchronized_clock() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gib() -> float:
    """Peak GPU memory allocated by this process so far, in GiB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def speed_line(images: int, seconds: float, what: str, waited: float | None = None) -> str:
    """The one line every script prints about its speed (the end-to-end benchmark parses it).

    ``waited``: the part of ``seconds`` the loop spent waiting for the data loader (`LoaderClock`),
    which says whether the loader or the model sets the pace."""
    line = (f"[speed] {what}: {images} images in {seconds:.2f} s = {images / max(seconds, 1e-9):.2f} images/s, "
            f"peak GPU memory {peak_gib():.2f} GiB")
    return line if waited is None else f"{line}, {waited:.2f} s of it waiting for data"


class LoaderClock:
    """Iterates ``loader`` and adds up, in ``waited``, the wall time spent inside its ``__next__``:
    the time the loop stood still because no batch was ready (worker start-up, decoding, and the
    copy to the device that accelerate's loader does before it yields)."""

    def __init__(self, loader):
        self.loader = loader
        self.waited = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        iterator, end = iter(self.loader), object()
        while True:
            start = time.perf_counter()
            batch = next(iterator, end)
            self.waited += time.perf_counter() - start
            if batch is end:
                return
            yield batch


class FirstBatch:
    """A loader whose first batch can be taken early (:meth:`first`): iterating the loader then starts
    its workers, so they decode while the caller warms up, and the batch comes back as the first of
    the next pass, which continues the same iterator. Later passes iterate the loader afresh."""

    def __init__(self, loader):
        self.loader = loader
        self._iterator = None
        self._head: list = []

    def __len__(self) -> int:
        return len(self.loader)

    def first(self):
        """The next pass's first batch (None for an empty loader), fetched now."""
        if self._iterator is None:
            self._iterator = iter(self.loader)
        if not self._head:
            batch = next(self._iterator, None)
            if batch is None:
                return None
            self._head.append(batch)
        return self._head[0]

    def __iter__(self):
        iterator = self._iterator if self._iterator is not None else iter(self.loader)
        head, self._iterator, self._head = self._head, None, []
        yield from head
        yield from iterator


def train_epoch(accelerator: Accelerator, model: torch.nn.Module, loader, optimizer, scheduler,
                loss_fn: Callable[[dict], dict[str, torch.Tensor]], *, max_norm: float, step: int, max_step: int,
                desc: str, shown: tuple[str, ...] | None = None, log_every: int = 20) -> tuple[int, dict[str, float]]:
    """One epoch of the custom recipes (Task 1, Task 3): accumulation, clipping, schedule, progress bar.

    ``loss_fn(batch)`` runs the forward (under autocast) and returns loss terms with ``total``. The
    scheduler steps once per optimizer step (it is not prepared by accelerate, which would step it
    once per process). Stops early at ``max_step``. The loss sums stay on the device and are read
    back only every ``log_every`` batches: reading them after every step would make the host wait
    for the GPU to finish the step before it can queue the next one. Returns the new step count and
    the epoch's means per image: ``loss`` (the total), ``loss_<term>`` for the rest, ``images_per_s``
    over all processes (data loading included), ``peak_gib`` and ``data_wait_s`` (this process's
    time waiting for the loader).
    """
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    clock = LoaderClock(loader)
    bar = tqdm(clock, desc=desc, disable=not accelerator.is_local_main_process)
    start = synchronized_clock()
    for batch_index, batch in enumerate(bar):
        with accelerator.accumulate(model):
            terms = loss_fn(batch)
            accelerator.backward(terms["total"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            scheduler.step()
            step += 1
        n = int(batch["image_grid_thw"].shape[0])
        seen += n
        for key, value in terms.items():
            term = value.detach().float() * n
            sums[key] = sums[key] + term if key in sums else term
        if batch_index % log_every == 0:
            bar.set_postfix({k: f"{float(v) / seen:.4f}" for k, v in sums.items() if shown is None or k in shown})
        if step >= max_step:
            break
    elapsed = synchronized_clock() - start
    stats = {("loss" if k == "total" else f"loss_{k}"): float(v) / max(seen, 1) for k, v in sums.items()}
    stats["images_per_s"] = seen * accelerator.num_processes / max(elapsed, 1e-9)
    stats["peak_gib"] = peak_gib()
    stats["data_wait_s"] = clock.waited
    accelerator.print(speed_line(seen * accelerator.num_processes, elapsed, f"{desc} (training loop)", clock.waited))
    return step, stats


def warm_up(accelerator: Accelerator, model: nn.Module, step: Callable[[], None]) -> float:
    """Run ``step`` (a forward and backward on a throwaway batch) once before the timed loop and
    return its seconds. The recipes call it on CUDA.

    On a machine that has not run these shapes before, the first step compiles the fused Triton
    kernels (several seconds, cached on disk for later runs) and cuBLAS picks its kernels; done
    here, that start-up cost is printed on its own instead of being folded into the first epoch's
    images/s. Nothing of the step survives: the random number generators are restored (the run's
    dropout masks and data order are those of a run without it), gradients are cleared, and under
    DDP no gradient is exchanged.
    """
    start = synchronized_clock()
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), accelerator.no_sync(model):
        step()
    model.zero_grad(set_to_none=True)
    return synchronized_clock() - start


def warm_up_first_batch(accelerator: Accelerator, model: nn.Module, batches: FirstBatch,
                        loss_fn: Callable[[dict], dict[str, torch.Tensor]]) -> None:
    """The custom recipes' warm-up (Task 1, Task 3), on CUDA only: :func:`warm_up` with a forward and
    backward of the first epoch's first batch (the loader's workers decode the rest meanwhile; the
    batch is trained on in the epoch), its seconds printed on their own line."""
    if accelerator.device.type != "cuda":
        return
    model.train()
    seconds = warm_up(accelerator, model, lambda: accelerator.backward(loss_fn(batches.first())["total"]))
    accelerator.print(f"[warm-up] one throwaway step (kernel compilation, GEMM selection; the batch is trained on "
                      f"in the epoch): {seconds:.2f} s")


def keep_best(metrics: dict[str, float], best: dict[str, float], folders: dict[str, str], ckpt_dir: Path,
              out_dir: Path, say: Callable[[str], None] = print) -> None:
    """Copy ``ckpt_dir`` to ``out_dir/<folder>`` for every metric that improved (e.g. best_by_AUROC)."""
    for key, name in folders.items():
        if metrics[key] > best.get(key, float("-inf")):
            best[key] = metrics[key]
            target = out_dir / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(ckpt_dir, target)
            say(f"new {name}: {key} = {metrics[key]:.4f} ({ckpt_dir.name})")


def training_outputs(*final: str) -> list[str]:
    """What a Task 1 / Task 3 training run writes into its output folder (``runs``): the resolved
    config, ``epoch_N/`` and ``best_by_*/`` checkpoints, skipped-record lists, and its ``final`` paths."""
    return [RESOLVED_CONFIG_NAME, "epoch_*", "best_by_*", "skipped_*", *final]


def best_logged(train_log: str | Path, run_id: str, metrics: Sequence[str]) -> dict[str, float]:
    """The best ``val_<metric>`` of the rows run ``run_id`` already appended to ``train_log``, so that a
    resumed run chooses ``best_by_*`` within the whole run (the :func:`keep_best` state)."""
    path = Path(train_log)
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("run_id") == run_id]
    best = {}
    for key in metrics:
        values = [float(r[f"val_{key}"]) for r in rows if r.get(f"val_{key}") not in (None, "", "nan")]
        values = [v for v in values if not math.isnan(v)]
        if values:
            best[key] = max(values)
    return best


def format_row(row: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def enable_gradient_checkpointing(base: nn.Module) -> None:
    """Non-reentrant checkpointing of every ViT block and decoder layer (the tap needs non-reentrant)."""
    kwargs = {"use_reentrant": False}
    # transformers 5.24 renamed the method (the old name warns); older 5.x releases only have the old one.
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False


def recompute_frozen_blocks(tower: nn.Module, count: int, lora_layers: list[int], last_layer: int) -> list[int]:
    """Non-reentrant checkpointing of up to ``count`` frozen ViT blocks of ``tower``; returns their indices.

    Only blocks that keep activations for the backward qualify: from the first LoRA block to the
    last block the heads read (``last_layer``), without LoRA themselves (so no dropout is replayed).
    They are spread evenly over that range. A recomputed block runs its forward twice, so it costs
    about one block forward per step and frees everything the block kept (at 448 px and batch 16 on
    the 7B tower about 0.4 GiB). When fewer blocks qualify than ``count`` (other LoRA or tapped
    layers than the shipped config's), all that qualify are recomputed; the caller compares.
    """
    lora = set(lora_layers)
    candidates = [i for i in range(min(lora_layers), last_layer + 1) if i not in lora] if lora_layers else []
    count = min(count, len(candidates))
    if count <= 0:
        return []
    step = len(candidates) / count
    chosen = [candidates[int(k * step + step / 2)] for k in range(count)]
    for index in chosen:
        block = tower.blocks[index]
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    return chosen


def hybrid_optimizer(model: HybridModel, cfg, total_steps: int):
    """AdamW with groups heads / fusion / vision LoRA / LM LoRA and a warm-up cosine schedule."""
    base_params = trainable_base_parameters(model.base)
    groups = param_groups({
        "heads": (list(model.heads.parameters()), cfg.lr_head),
        "fusion": (list(model.fusion.parameters()) if model.fusion is not None else [], cfg.lr_fusion),
        "lora_vision": (base_params["vision"], cfg.lr_lora),
        "lora_lm": (base_params["lm"], cfg.lr_lora_lm if cfg.lr_lora_lm is not None else cfg.lr_lora),
    }, cfg.weight_decay)
    return build_optimizer_and_schedule(groups, total_steps=total_steps, warmup_ratio=cfg.warmup_ratio)
