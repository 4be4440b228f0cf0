"""Loop plumbing shared by the custom training recipes (Task 1, Task 3): accelerate, seeds,
optimizer groups, schedule, autocast. The recipes themselves stay readable top to bottom."""

from __future__ import annotations

import random
import time
from contextlib import ExitStack, nullcontext

import numpy as np
import torch
import torch.utils.checkpoint
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs

from qwen_forensics.config.dtypes import resolve_dtype


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


def synchronized_clock() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gib() -> float:
    """Peak GPU memory allocated by this process so far, in GiB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def _peak_part(separator: str) -> str:
    """The peak GPU memory part of a [speed] line; nothing on a CPU run, where it would always read 0."""
    return f"{separator}peak GPU memory {peak_gib():.2f} GiB" if torch.cuda.is_available() else ""


def speed_line(images: int, seconds: float, what: str, waited: float | None = None) -> str:
    """The one line every script prints about its speed (the end-to-end benchmark parses it).

    ``waited``: the part of ``seconds`` the loop spent waiting for the data loader (`LoaderClock`),
    which says whether the loader or the model sets the pace."""
    line = (f"[speed] {what}: {images} images in {seconds:.2f} s = {images / max(seconds, 1e-9):.2f} images/s"
            + _peak_part(", "))
    return line if waited is None else f"{line}, {waited:.2f} s of it waiting for data"


def evaluation_speed_line(images: int, inference_s: float, whole_s: float, waited: float | None = None) -> str:
    """The one ``[speed]`` line of an evaluation (and of predict.py), printed at its end: the inference
    loop's pace and the whole run's, from the first batch to the last file written, as the user waits
    for it (``benchmark_e2e.py`` parses it)."""
    wait = "" if waited is None else f", {waited:.2f} s of it waiting for data"
    return (f"[speed] evaluation: {images} images; inference {inference_s:.2f} s = "
            f"{images / max(inference_s, 1e-9):.2f} images/s{wait}; whole run {whole_s:.2f} s = "
            f"{images / max(whole_s, 1e-9):.2f} images/s (first batch to last file written)" + _peak_part("; "))


SAMPLER_GENERATOR = "sampler_generator"  # its key in a checkpoint's training state (``extra``)


def loader_state(loader) -> dict[str, torch.Tensor]:
    """What a resumed run needs to shuffle the next epoch as the uninterrupted run does, for the training
    state's ``extra``. Under several processes accelerate draws the shuffle from a generator of its own,
    seeded from the global generator when the loader is prepared and advanced once per epoch (and kept
    equal on every process); the per-process random states of the checkpoint do not cover it, so its
    state is saved here. One process has no such generator: its shuffle comes from the global generator,
    which the checkpoint's random states restore."""
    generator = getattr(loader, "synchronized_generator", None)
    return {} if generator is None else {SAMPLER_GENERATOR: generator.get_state()}


def restore_loader_state(loader, extra: dict) -> None:
    """Put a checkpoint's :func:`loader_state` back into the prepared ``loader`` (before its next epoch).
    Resumed on another number of processes the shards differ anyway, and the checkpoint's state (or this
    loader's generator) is absent: nothing to restore."""
    generator = getattr(loader, "synchronized_generator", None)
    if generator is not None and SAMPLER_GENERATOR in extra:
        generator.set_state(extra[SAMPLER_GENERATOR])


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


