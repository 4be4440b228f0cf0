"""One-command demo: tiny Qwen2.5-VL + synthetic forgery set in a workspace, then every pipeline.

    python Qwen_code/demo.py --workspace demo_workspace

The workspace mirrors the user's root (``/root/autodl-tmp``): ``Qwen2.5-VL-7B-Instruct/`` (the tiny
model, same on-disk format as the real one), ``data/`` (``trainingset2/``, ``testset2/``) and the
task output folders. Each task runs through its own ``run_*_experiment.py`` with ``--root`` pointing
at the workspace, so the shipped configs are used as the user uses them; the few ``--set`` overrides
below only make the CPU run short (224 px letterbox, more epochs on a small set).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from qwen_forensics.model.tiny import build_tiny_model
from qwen_forensics.synthetic import make_demo_dataset

CODE = Path(__file__).resolve().parent

# (name, runner script, extra arguments for a short CPU run)
PIPELINES = [
    ("Task 1 / subtask 1 (ViT LoRA + heads, head evaluation)",
     "task1_modular_lora/run_subtask_vit_head_experiment.py",
     ["--train-set", "image_size=224", "--train-set", "epochs=8", "--train-set", "batch_size=8",
      "--train-set", "num_workers=0", "--train-set", "lr_head=0.003", "--train-set", "lr_lora=0.001",
      "--eval-set", "num_workers=0", "--eval-set", "batch_size=16"]),
    ("Task 1 / subtask 2 (full model answers Real/Fake with the Task 1 LoRA)",
     "task1_modular_lora/run_subtask_full_model_experiment.py",
     ["--skip-train", "--eval-set", "num_workers=0", "--eval-set", "batch_size=16"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="demo_workspace", help="folder for model, data and results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ws = Path(args.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)

    model_dir = ws / "Qwen2.5-VL-7B-Instruct"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=args.seed)
    print(f"tiny model: {model_dir}")
    summary = make_demo_dataset(ws, n_train=200, n_test=60, frames_per_video=1, seed=args.seed, overwrite=True)
    print(f"demo data: {summary['data_dir']} ({summary['train_idx']} train / {summary['val_idx']} val / "
          f"{summary['test_records']} test images)")

    for name, script, extra in PIPELINES:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        cmd = [sys.executable, str(CODE / script), "--root", str(ws), *extra]
        result = subprocess.run(cmd)
        if result.returncode:
            raise SystemExit(f"demo stopped: {script} exited with {result.returncode}")
        print(f"=== done in {time.perf_counter() - start:.0f} s")

    print(f"\nresults under {ws}:")
    for csv in sorted(ws.glob("task*/**/*.csv")):
        print(f"  {csv.relative_to(ws)}")
        lines = csv.read_text(encoding="utf-8").splitlines()
        print(f"    {lines[0]}\n    {lines[-1]}")


if __name__ == "__main__":
    main()
