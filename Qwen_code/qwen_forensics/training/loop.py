"""The training loop of the custom recipes (Task 1, Task 3): one epoch with accumulation, clipping and the
[speed] line, the warm-up step, best-checkpoint bookkeeping within a run, and the log row."""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.utils.checkpoint
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from qwen_forensics.checkpoints.names import TRAINING_RUN_ENTRIES
from qwen_forensics.report.training import TRAINING_HTML, read_log_rows, write_training_report
from qwen_forensics.training.runtime import FirstBatch, LoaderClock, peak_gib, speed_line, synchronized_clock


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
    over all processes (data loading included), ``peak_gib`` (on a GPU) and ``data_wait_s`` (this process's
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
    if torch.cuda.is_available():
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
    return [*TRAINING_RUN_ENTRIES, TRAINING_HTML, *final]


def write_training_page(out_dir: str | Path, train_log: str | Path, run_id: str, script: str) -> Path:
    """``training.html`` in ``out_dir``: this run's rows of ``train_log`` as curves (called after every
    epoch, so the page follows the run)."""
    rows = read_log_rows(train_log, run_id)
    description = {"script": script, "run id": run_id, "training log": str(train_log), "epochs logged": len(rows)}
    return write_training_report(Path(out_dir) / TRAINING_HTML, rows, title=f"Training: {script}",
                                 description=description)


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
    """The printed epoch line: a metric that was not computed (NaN, e.g. no validation set) is left out of
    the line; the training log keeps its empty column."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if not (isinstance(v, float) and math.isnan(v)))
