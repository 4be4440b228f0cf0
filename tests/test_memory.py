"""``training.memory``: the line through two measured peaks, and the advice for a batch that does not fit
(the estimate's logic; the probe itself runs on CUDA and is measured on the device)."""

from __future__ import annotations

import pytest
import torch

from qwen_forensics.training import memory
from qwen_forensics.training.memory import MemoryLine, check_fits, probe_peak

KEYS = dict(batch_key="batch_size", accum_key="grad_accum", other_keys="recompute_blocks", source="a 24 GiB card")


def test_the_probe_fits_the_line_through_the_two_peaks(monkeypatch):
    """Peaks of 3.5 GiB at one image and 5.25 at two: 1.75 GiB per image on 1.75 GiB fixed."""
    state = {"peak": 0.0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=0.0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"] * memory.GIB)
    line = probe_peak(lambda n: state.update(peak=1.75 + 1.75 * n), torch.device("cuda"))
    assert line == MemoryLine(1.75, 1.75) and line.peak(16) == pytest.approx(29.75)


def test_a_batch_that_fits_needs_no_change():
    advice = check_fits(MemoryLine(10.0, 0.5), 16, 1, 22.0, **KEYS)
    assert advice.message is None and advice.estimated == 18.0


def test_a_batch_that_does_not_fit_gets_the_batch_and_accumulation_that_do():
    """42 GiB at batch 16 against 22: six images fit, so 6 x 3 keeps (at least) the 16 images per step."""
    advice = check_fits(MemoryLine(10.0, 2.0), 16, 1, 22.0, **KEYS)
    assert advice.estimated == 42.0
    assert advice.message.startswith("stopped before the first step: batch_size 16 needs an estimated 42.0 GiB")
    assert "set batch_size 6 and grad_accum 3 (the same 16 images per optimizer step, estimated 22.0 GiB)" \
        in advice.message
    assert "or recompute_blocks" in advice.message and "10.0 GiB fixed + 2.00 GiB per image" in advice.message
    # Already accumulating: the effective batch (8 x 2) is kept.
    again = check_fits(MemoryLine(10.0, 2.0), 8, 2, 22.0, **KEYS)
    assert "set batch_size 6 and grad_accum 3" in again.message


def test_when_not_even_one_image_fits_the_other_keys_are_the_way_out():
    advice = check_fits(MemoryLine(30.0, 2.0), 4, 1, 22.0, **KEYS)
    assert "not even one image per step fits; or recompute_blocks" in advice.message


def test_the_check_is_skipped_on_the_cpu():
    class Cpu:
        device = torch.device("cpu")

    assert memory.preflight(Cpu(), torch.nn.Linear(1, 1), [], None, None, batch_size=1, grad_accum=1,
                            planned_gib=None, batch_key="b", accum_key="a", other_keys="o") is None


def test_the_probe_runs_the_model_in_training_mode_and_restores_its_mode(monkeypatch):
    """Checkpointed layers recompute only in training mode: a probe in eval mode (a freshly loaded model's)
    measured their activations as kept, 39.2 GiB for a step that peaks at 21.6 (Task 3, H100)."""
    class Cuda:
        device = torch.device("cuda")

    model = torch.nn.Linear(1, 1).eval()
    seen = []
    monkeypatch.setattr(memory, "probe_peak", lambda step, device: seen.append(model.training) or MemoryLine(1.0, 0.5))
    monkeypatch.setattr(memory, "budget_gib", lambda device, planned: (22.0, "a 24 GiB card"))
    line = memory.preflight(Cuda(), model, [], None, None, batch_size=4, grad_accum=1, planned_gib=24.0,
                            batch_key="b", accum_key="a", other_keys="o", say=lambda line: None)
    assert seen == [True] and not model.training
    assert line.peak(4) == pytest.approx(3.0 + 8 * 2 / memory.GIB)
