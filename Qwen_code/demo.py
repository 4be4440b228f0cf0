"""One-command demo: tiny Qwen2.5-VL + synthetic forgery set in a workspace, then every pipeline; it ends
by printing the path of every evaluation's report.html.

    python Qwen_code/demo.py --workspace demo_workspace

The workspace mirrors the user's root (``/root/autodl-tmp``): ``Qwen2.5-VL-7B-Instruct/`` (the tiny
model, same on-disk format as the real one), ``data/`` (``trainingset2/``, ``testset2/``) and the
task output folders. Each task runs through its own ``run_*_experiment.py`` with ``--root`` pointing
at the workspace, so the shipped configs are used as the user uses them; the few ``--set`` overrides
below only make the CPU run short: a 224 px letterbox, and for Task 1 the heads read ViT block 1
with a 64-channel fusion, because the tiny model's weights are random and its deep blocks carry little
patch-level detail (with the shipped [7, 15, 23, 31] the same run reaches only about 0.66 AUROC).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation import REPORT_NAME

CODE = Path(__file__).resolve().parent


def _each(flag: str, *values: str) -> list[str]:
    """``--train-set a --train-set b`` from (flag, a, b)."""
    return [part for value in values for part in (flag, value)]


# (name, runner script, extra arguments for a short CPU run)
PIPELINES = [
    ("Task 1 / subtask 1 (ViT LoRA + heads, head evaluation)",
     "task1_modular_lora/run_subtask_vit_head_experiment.py",
     [*_each("--train-set", "image_size=224", "epochs=8", "batch_size=8", "num_workers=1", "lr_head=0.003",
             "lr_lora=0.001", "visual_layers=[1]", "lora_target_layers=[1]", "fuse_dim=64"),
      *_each("--eval-set", "num_workers=1", "batch_size=16")]),
    ("Task 1 / subtask 2 (full model answers Real/Fake with the Task 1 LoRA)",
     "task1_modular_lora/run_subtask_full_model_experiment.py",
     ["--skip-train", *_each("--eval-set", "num_workers=0", "batch_size=16")]),
    ("Task 2 (LM-supervised ViT LoRA: map, train, infer)",
     "task2_lm_lora/run_task2_experiment.py",
     [*_each("--train-set", "image_size=112", "lora_target_blocks=[1]", "training_args.num_train_epochs=20",
             "training_args.learning_rate=0.002", "training_args.per_device_train_batch_size=8",
             "training_args.gradient_accumulation_steps=1", "training_args.gradient_checkpointing=false",
             "training_args.save_strategy=\"no\"", "training_args.logging_steps=50"),
      *_each("--infer-set", "num_workers=0", "batch_size=30")]),
    ("Task 3 (hybrid LoRA on ViT + merger + LM, heads, fused soft tokens)",
     "task3_hybrid_lora/run_task3_experiment.py",
     [*_each("--train-set", "image_size=112", "epochs=12", "batch_size=8", "grad_accum=1", "num_workers=0",
             "lr_head=0.003", "lr_lora=0.002", "lr_fusion=0.003", "fuse_dim=64", "visual_layers=[1]",
             "lora.visual.blocks=[1]", "gradient_checkpointing=false"),
      *_each("--eval-set", "num_workers=0", "batch_size=16")]),
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
    print("\nreports (open in a browser):")
    for report in sorted(ws.glob(f"task*/**/{REPORT_NAME}")):
        print(f"  {report}")


if __name__ == "__main__":
    main()
