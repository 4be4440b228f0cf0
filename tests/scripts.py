"""Test helper: run the pipeline scripts in this process, as the user runs them from the command line.

``run_script("lora_eval", root, "batch_size=4")`` loads the script file as a fresh module and calls
its ``main(["--root", root, "--set", ...])``, so coverage, fixtures and monkeypatching see the real
code path; what it prints is returned (and echoed for the pytest log).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
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
