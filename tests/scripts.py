"""Test helper: run the pipeline scripts in this process, as the user runs them from the command line,
or as several CPU processes under ``accelerate launch``.

``run_script("lora_eval", root, "batch_size=4")`` loads the script file as a fresh module and calls
its ``main(["--root", root, "--set", ...])``, so coverage, fixtures and monkeypatching see the real
code path; what it prints is returned (and echoed for the pytest log). ``launch(2, "lora_eval", args)``
runs the script as two gloo processes (real DDP) and returns the records each one loaded.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CODE = Path(__file__).resolve().parents[1] / "Qwen_code"
# IMDLBenCo, the field's benchmark code, in a venv of its own (it pins numpy<2): .ci/run makes .venv-imdlbenco;
# elsewhere point IMDLBENCO_PYTHON at a python with imdlbenco 0.1.45 installed.
IMDLBENCO_PYTHON = Path(os.environ.get("IMDLBENCO_PYTHON", CODE.parent / ".venv-imdlbenco" / "bin" / "python"))
# Gradio (the app's optional dependency) in a venv of its own on top of the project's packages (gradio 6 pins
# pillow<13): .ci/run makes .venv-app; elsewhere point APP_PYTHON at such a python.
APP_PYTHON = Path(os.environ.get("APP_PYTHON", CODE.parent / ".venv-app" / "bin" / "python"))
needs_app = pytest.mark.skipif(not APP_PYTHON.is_file(), reason=f"no python with gradio at {APP_PYTHON} (.ci/run "
                               "creates .venv-app; or set APP_PYTHON)")
needs_imdlbenco = pytest.mark.skipif(not IMDLBENCO_PYTHON.is_file(), reason=f"no IMDLBenCo python at "
                                     f"{IMDLBENCO_PYTHON} (.ci/run creates .venv-imdlbenco; or set IMDLBENCO_PYTHON)")
# The user's real train/val index files (no images), next to the repository as in CI.
SHARED_INDEX = CODE.parents[1] / "shared" / "data" / "forgerynet_index"
needs_real_index = pytest.mark.skipif(not SHARED_INDEX.is_dir(), reason=f"shared real index not found at "
                                      f"{SHARED_INDEX} (shared/ is a sibling of the repo clone)")
SCRIPTS = {
    "lora_train": CODE / "task1_modular_lora/lora_train.py",
    "lora_eval": CODE / "task1_modular_lora/subtask_vit_head_eval/lora_eval.py",
    "full_model_eval": CODE / "task1_modular_lora/subtask_full_model_eval/full_model_eval.py",
    "map": CODE / "task2_lm_lora/map.py",
    "LORA": CODE / "task2_lm_lora/LORA.py",
    "lora_infer": CODE / "task2_lm_lora/lora_infer.py",
    "hybrid_train": CODE / "task3_hybrid_lora/hybrid_train.py",
    "hybrid_eval": CODE / "task3_hybrid_lora/hybrid_eval.py",
    "predict": CODE / "predict.py",
    "app": CODE / "app.py",
    "benchmark_sets": CODE / "benchmark_sets.py",
    "compare_runs": CODE / "compare_runs.py",
    "benchmark_gpu": CODE / "benchmark_gpu.py",
    "benchmark_e2e": CODE / "benchmark_e2e.py",
}


def load_script(script: str):
    spec = importlib.util.spec_from_file_location(f"{script}_under_test", SCRIPTS[script])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script: str, root: Path | None, *sets: str, config: Path | None = None,
               argv: list[str] | None = None, module=None) -> str:
    """``main`` of a pipeline script with ``--root`` and ``--set`` overrides (or a raw ``argv``); ``module``
    is the script already loaded (by :func:`load_script`), e.g. to time only its ``main``."""
    if argv is None:
        argv = ["--root", str(root), *(["--config", str(config)] if config else [])]
        for value in sets:
            argv += ["--set", value]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            result = (module or load_script(script)).main(argv)
    finally:
        sys.stdout.write(printed.getvalue())
    if isinstance(result, int) and result != 0:
        raise SystemExit(result)
    return printed.getvalue()


def demo_index(root: Path, name: str) -> Path:
    """The train / val / test index of the demo data (``demo.dataset.make_demo_dataset``) under ``root``."""
    return root / "data" / {"train": "trainingset2/train_idx.json", "val": "trainingset2/val_idx.json",
                            "test": "testset2/annotation.json"}[name]


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def one_torch_thread():
    """The tiny model's ops are too small to gain from threads; on 2 shared cores extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sets(*overrides: str) -> list[str]:
    """``--set`` arguments for each override."""
    return [arg for override in overrides for arg in ("--set", override)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, script: str | Path, args: list[str], positions: Path, *, timeout: int = 600,
           cwd: Path | None = None) -> tuple[list[list[list[int]]], str]:
    """Run a pipeline script (a :data:`SCRIPTS` name or a path) as ``num_processes`` CPU processes and return,
    per process, the dataset positions of every batch it collated (``record_positions.py`` in ``positions``),
    and what the processes printed.

    ``accelerate launch --cpu --num_processes N`` starts a single process unless MPI is set up;
    ``--multi_gpu`` with ``ACCELERATE_USE_CPU`` starts N CPU processes on gloo, i.e. real DDP. One torch
    thread each: the tiny model's ops are too small to gain from threads, and N processes on 2 cores
    would otherwise oversubscribe them.
    """
    path = SCRIPTS[script] if isinstance(script, str) and script in SCRIPTS else Path(script)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(Path(__file__).with_name("record_positions.py")),
               str(positions), str(path), *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd or CODE.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    sys.stdout.write(done.stdout)
    seen = [json.loads((positions / f"positions_{i}.json").read_text()) for i in range(num_processes)]
    assert [s["num_processes"] for s in seen] == [num_processes] * num_processes
    return [s["batches"] for s in seen], done.stdout


def check_shards(batches: list[list[list[int]]], num_records: int, batch_size: int) -> None:
    """What accelerate's sharded loader must give N processes: the same number of full batches each,
    every record at least once, and no more repeats than it takes to fill the last round (records from
    the start of the index)."""
    shards = [[p for batch in process for p in batch] for process in batches]
    assert len({len(process) for process in batches}) == 1
    assert all(len(batch) == batch_size for process in batches for batch in process)
    assert sorted(set().union(*shards)) == list(range(num_records))
    assert 0 <= sum(map(len, shards)) - num_records < len(batches) * batch_size
