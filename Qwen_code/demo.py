"""One-command demo: tiny Qwen2.5-VL + synthetic forgery set in a workspace, then every pipeline and
predict.py on a few test images; it ends with one results table (task, metric, value, report), the
checkpoints, the training-curve pages, the total time and the commands to try next.

    python Qwen_code/demo.py --workspace demo_workspace [--quick]

The workspace mirrors the user's root (``/root/autodl-tmp``): ``Qwen2.5-VL-7B-Instruct/`` (the tiny
model, same on-disk format as the real one), ``data/`` (``trainingset2/``, ``testset2/``) and the
task output folders. Each task runs through its own ``run_*_experiment.py`` with ``--root`` pointing
at the workspace, so the shipped configs are used as the user uses them; the few ``--set`` overrides
below only make the CPU run short: a 224 px letterbox, and for Task 1 the heads read ViT block 1
with a 64-channel fusion, because the tiny model's weights are random and its deep blocks carry little
patch-level detail (with the shipped [7, 15, 23, 31] the same run reaches only about 0.66 AUROC).

Every pipeline runs in its own process with its math threads capped to the cores this process may use
and told to sleep rather than spin while they wait (``OMP_WAIT_POLICY=PASSIVE``): torch otherwise starts one
thread per core of the machine, each busy-waiting between operations, and beside any other job on the
machine those threads take turns on the cores. On this project's 2-core machine with another job running, a
loop of small matrix products (the tiny model's kind of work) took 2.3-10.1 s with 2 spinning threads,
0.5-0.6 s with 2 passive ones and 0.2 s with one thread. ``--quick`` trains on fewer images for fewer
epochs (a check that everything runs; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen_forensics.config import usable_cores
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation import REPORT_NAME
from qwen_forensics.model.loader import TINY_MODEL_MARKER
from qwen_forensics.report import TRAINING_HTML

CODE = Path(__file__).resolve().parent
MODEL_NAME = "Qwen2.5-VL-7B-Instruct"
PREDICT_OUT = "predictions"
# Seconds each step took in the demo's own run on this project's 2-core machine with another job running (5.1 min
# in all); the progress line scales them by the pace the finished steps actually had. --quick took about 0.4 of that.
BASE_SECONDS = {"task1": 108.0, "task1_full": 13.0, "task2": 96.0, "task3": 65.0, "predict": 8.0}
QUICK_FACTOR = 0.4


def _each(flag: str, *values: str) -> list[str]:
    """``--train-set a --train-set b`` from (flag, a, b)."""
    return [part for value in values for part in (flag, value)]


@dataclass(frozen=True)
class Pipeline:
    key: str
    name: str
    script: str
    extra: list[str]
    quick: list[str]
    csv: str                      # the evaluation's metrics CSV, relative to the workspace
    metrics: tuple[str, ...]      # the columns the results table shows

    def command(self, ws: Path, quick: bool) -> list[str]:
        return [sys.executable, str(CODE / self.script), "--root", str(ws), *self.extra, *(self.quick if quick else [])]


PIPELINES = [
    Pipeline("task1", "Task 1 / subtask 1 (ViT LoRA + heads, head evaluation)",
             "task1_modular_lora/run_subtask_vit_head_experiment.py",
             [*_each("--train-set", "image_size=224", "epochs=8", "batch_size=8", "num_workers=1", "lr_head=0.003",
                     "lr_lora=0.001", "visual_layers=[1]", "lora_target_layers=[1]", "fuse_dim=64"),
              *_each("--eval-set", "num_workers=1", "batch_size=16")],
             _each("--train-set", "epochs=2"),
             "task1_modular_lora/subtask_vit_head_eval/metrics.csv", ("auroc", "pixel_f1", "pixel_iou")),
    Pipeline("task1_full", "Task 1 / subtask 2 (full model answers Real/Fake with the Task 1 LoRA)",
             "task1_modular_lora/run_subtask_full_model_experiment.py",
             ["--skip-train", *_each("--eval-set", "num_workers=0", "batch_size=16")], [],
             "task1_modular_lora/subtask_full_model_eval/metrics.csv", ("auroc",)),
    Pipeline("task2", "Task 2 (LM-supervised ViT LoRA: map, train, infer)",
             "task2_lm_lora/run_task2_experiment.py",
             [*_each("--train-set", "image_size=112", "lora_target_blocks=[1]", "training_args.num_train_epochs=20",
                     "training_args.learning_rate=0.002", "training_args.per_device_train_batch_size=8",
                     "training_args.gradient_accumulation_steps=1", "training_args.gradient_checkpointing=false",
                     "training_args.save_strategy=\"no\"", "training_args.logging_steps=50",
                     "training_args.dataloader_num_workers=0"),
              *_each("--infer-set", "num_workers=0", "batch_size=30")],
             _each("--train-set", "training_args.num_train_epochs=2", "training_args.logging_steps=5"),
             "task2_lm_lora/evaluation/metrics.csv", ("auroc",)),
    Pipeline("task3", "Task 3 (hybrid LoRA on ViT + merger + LM, heads, fused soft tokens)",
             "task3_hybrid_lora/run_task3_experiment.py",
             [*_each("--train-set", "image_size=112", "epochs=12", "batch_size=8", "grad_accum=1", "num_workers=0",
                     "lr_head=0.003", "lr_lora=0.002", "lr_fusion=0.003", "fuse_dim=64", "visual_layers=[1]",
                     "lora.visual.blocks=[1]", "gradient_checkpointing=false"),
              *_each("--eval-set", "num_workers=0", "batch_size=16")],
             _each("--train-set", "epochs=2"),
             "task3_hybrid_lora/evaluation/metrics.csv", ("lm_auroc", "head_auroc", "pixel_iou")),
]
TASK1_FINAL = "task1_modular_lora/training/final"
# Where each pipeline's training writes its checkpoint (a folder) and training.html, relative to the workspace.
CHECKPOINTS = {"Task 1": TASK1_FINAL, "Task 2": "task2_lm_lora/training/lora_adapter",
               "Task 3": "task3_hybrid_lora/training/final"}
TRAINING_PAGES = ("task1_modular_lora/training", "task2_lm_lora/training", "task3_hybrid_lora/training")


def capped_env(cores: int) -> dict[str, str]:
    """The environment of each step: math libraries at most ``cores`` threads (a caller's own, lower,
    setting is kept), waiting threads sleeping (a caller's own policy is kept)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        current = env.get(name, "")
        if not current.isdigit() or int(current) > cores:
            env[name] = str(cores)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Progress:
    """Estimates per step from :data:`BASE_SECONDS`, corrected by the pace of the steps done so far."""

    def __init__(self, keys: list[str], quick: bool):
        scale = QUICK_FACTOR if quick else 1.0
        self.base = {k: BASE_SECONDS[k] * scale for k in keys}
        self.done: dict[str, float] = {}

    def pace(self) -> float:
        if not self.done:
            return 1.0
        return sum(self.done.values()) / sum(self.base[k] for k in self.done)

    def estimate(self, key: str) -> float:
        return self.base[key] * self.pace()

    def left(self) -> float:
        return sum(self.base[k] for k in self.base if k not in self.done) * self.pace()


def last_row(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else None


def results_table(ws: Path) -> list[tuple[str, str, str, str]]:
    """(task, metric, value, report) of each pipeline's latest evaluation row."""
    table = []
    for pipeline in PIPELINES:
        row = last_row(ws / pipeline.csv)
        report = str(Path(pipeline.csv).parent / REPORT_NAME)
        short = pipeline.name.split(" (")[0]
        for metric in pipeline.metrics:
            value = row.get(metric, "") if row else ""
            try:
                shown = f"{float(value):.3f}"
            except ValueError:
                shown = "—"
            table.append((short, metric, shown, report))
    return table


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(out)


def run_step(label: str, command: list[str], env: dict[str, str], progress: Progress, key: str) -> None:
    print(f"\n=== {label}: about {minutes(progress.estimate(key))} (all steps left: about "
          f"{minutes(progress.left())})", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"demo stopped: {Path(command[1]).name} exited with {result.returncode} (its messages above)")
    progress.done[key] = seconds
    print(f"=== done in {minutes(seconds)}", flush=True)


def summary(ws: Path, started: float, quick: bool) -> str:
    """The closing text: results table, checkpoints, training curves, gallery, time, caveat, next commands."""
    lines = [f"\nResults (paths under {ws}):", format_table(results_table(ws), ("task", "metric", "value", "report"))]
    lines.append("\ncheckpoints:")
    lines += [f"  {task}: {ws / path}" for task, path in CHECKPOINTS.items() if (ws / path).exists()]
    pages = [ws / folder / TRAINING_HTML for folder in TRAINING_PAGES if (ws / folder / TRAINING_HTML).is_file()]
    lines.append("training curves (open in a browser):")
    lines += [f"  {page}" for page in pages]
    gallery = ws / PREDICT_OUT / "index.html"
    if gallery.is_file():
        lines.append(f"predict.py gallery of the test images: {gallery}")
    lines.append(f"\ntotal time: {minutes(time.perf_counter() - started)}")
    lines.append("\nThese numbers come from a TINY RANDOM model on synthetic pictures: they show that every pipeline "
                 "runs and learns, not how well the method works. Task 2's loss stays near 5 and its answer_text is "
                 "not words, and subtask 2 is near chance (Task 1 never trains the LM to answer): expected here."
                 + (" --quick trains too briefly for any number to mean something." if quick else ""))
    lines.append("\nNext:")
    lines.append(f"  your own images: python Qwen_code/predict.py --ckpt {ws / TASK1_FINAL} YOUR_IMAGES/ "
                 f"--out {PREDICT_OUT}   (then open {PREDICT_OUT}/index.html)")
    if (CODE / "app.py").is_file():
        lines.append(f"  in a browser window: pip install -e \".[app]\", then python Qwen_code/app.py --ckpt "
                     f"{ws / TASK1_FINAL}")
    lines.append(f"  compare runs: python Qwen_code/compare_runs.py {' '.join(str(ws / p.csv) for p in PIPELINES)}")
    lines.append("  the real model: put Qwen2.5-VL-7B-Instruct/ and data/ in one folder (default /root/autodl-tmp), "
                 "then python Qwen_code/task1_modular_lora/run_subtask_vit_head_experiment.py [--root FOLDER]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="demo_workspace", help="folder for model, data and results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs: checks that everything runs")
    args = parser.parse_args()
    started = time.perf_counter()
    cores = usable_cores()
    env = capped_env(cores)
    torch.set_num_threads(cores)
    ws = Path(args.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    progress = Progress([p.key for p in PIPELINES] + ["predict"], args.quick)
    print(f"demo: {cores} CPU core(s) usable, math threads capped to {cores} per step (passive waiting); about "
          f"{minutes(progress.left())} on a 2-core machine (the estimates follow this machine's pace as steps finish)")

    model_dir = ws / MODEL_NAME
    if not (model_dir / TINY_MODEL_MARKER).is_file():
        build_tiny_model(model_dir, seed=args.seed)
    print(f"tiny model: {model_dir}")
    n_train, n_test = (60, 24) if args.quick else (200, 60)
    data = make_demo_dataset(ws, n_train=n_train, n_test=n_test, frames_per_video=1, seed=args.seed, overwrite=True)
    print(f"demo data: {data['data_dir']} ({data['train_idx']} train / {data['val_idx']} val / "
          f"{data['test_records']} test images)")

    for k, pipeline in enumerate(PIPELINES, start=1):
        run_step(f"[{k}/{len(PIPELINES) + 1}] {pipeline.name}", pipeline.command(ws, args.quick), env, progress,
                 pipeline.key)
    test_images = ws / "data" / "testset2" / "image"
    run_step(f"[{len(PIPELINES) + 1}/{len(PIPELINES) + 1}] predict.py on the test images with the Task 1 checkpoint",
             [sys.executable, str(CODE / "predict.py"), "--ckpt", str(ws / TASK1_FINAL), str(test_images),
              "--out", str(ws / PREDICT_OUT), "--num-workers", "0"], env, progress, "predict")
    print(summary(ws, started, args.quick))


if __name__ == "__main__":
    main()
