"""Task 3 end to end on the tiny model and synthetic data, through run_task3_experiment.py as the
user runs it: training (with validation and resume files), evaluation, and learning: the trained
hybrid's LM-based AUROC beats the untrained one's by a clear margin."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen_forensics.checkpoints.task3 import CheckpointPaths, save_hybrid_weights
from qwen_forensics.config.loading import parse_config
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.model.hybrid import build_hybrid_model
from qwen_forensics.model.loader import load_model, load_processor
from qwen_forensics.task_configs import Task3TrainConfig

RUNNER = Path(__file__).resolve().parents[1] / "Qwen_code" / "task3_hybrid_lora" / "run_task3_experiment.py"
# Short CPU run: 112 px, small fused width, learning rates that let the tiny model learn in ~150 steps.
# The heads read (and LoRA adapts) ViT block 1: the tiny model's weights are random and its deep
# blocks carry little patch-level detail (the demo does the same for Task 1).
TRAIN = {"image_size": 112, "fuse_dim": 64, "epochs": 8, "batch_size": 8, "grad_accum": 1, "num_workers": 0,
         "lr_head": 0.003, "lr_lora": 0.002, "lr_fusion": 0.003, "gradient_checkpointing": False,
         "visual_layers": [1], "lora.visual.blocks": [1]}
EVAL = {"num_workers": 0, "batch_size": 30, "num_heatmaps": 4}


def _sets(flag: str, values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in (flag, f"{k}={json.dumps(v)}")]


def _run(ws: Path, *extra: str) -> None:
    # One thread per process: on a shared 2-core machine torch's default two threads contend and
    # run several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(RUNNER), "--root", str(ws), *extra], check=True, env=env)


def _last_row(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[-1]


@pytest.mark.slow
def test_trained_hybrid_answers_better_than_untrained(tmp_path):
    ws = tmp_path
    build_tiny_model(ws / "Qwen2.5-VL-7B-Instruct")
    # The unmistakable manipulation only, so that a few CPU minutes of training show learning.
    make_demo_dataset(ws, n_train=200, n_test=60, frames_per_video=1, seed=0, kind_weights={"checker": 1.0})
    data = ws / "data" / "trainingset2"
    train_sets = {**TRAIN, "ann_val": str(data / "val_idx.json")}

    untrained = ws / "untrained"
    cfg = parse_config(Task3TrainConfig, {}, overrides=[f"{k}={json.dumps(v)}" for k, v in train_sets.items()],
                       root=str(ws))
    torch.manual_seed(cfg.seed)
    model, spec = build_hybrid_model(load_model(cfg.base_model_path, dtype="float32"),
                                     load_processor(cfg.base_model_path, cfg.image_size), cfg)
    save_hybrid_weights(model, spec, CheckpointPaths.folder(untrained))
    _run(ws, "--skip-train", *_sets("--eval-set", {**EVAL, "lora_checkpoint": str(untrained / "adapter"),
                                                   "head_checkpoint": str(untrained / "heads.safetensors"),
                                                   "fusion_checkpoint": str(untrained / "fusion.safetensors"),
                                                   "out_dir": str(untrained / "evaluation"),
                                                   "csv_path": str(untrained / "evaluation" / "metrics.csv")}))
    before = _last_row(untrained / "evaluation" / "metrics.csv")

    _run(ws, *_sets("--train-set", train_sets), *_sets("--eval-set", EVAL))
    out = ws / "task3_hybrid_lora"
    after = _last_row(out / "evaluation" / "metrics.csv")
    final = out / "training" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["adapter", "fusion.safetensors", "heads.safetensors",
                                                       "resolved_config.json", "rng_state_0.pt", "training_state.pt"]
    assert (out / "training" / "best_by_AUROC" / "adapter").is_dir()
    log = list(csv.DictReader((out / "training" / "train_log.csv").open(encoding="utf-8")))
    assert [int(r["epoch"]) for r in log] == list(range(8)) and log[-1]["val_lm_auroc"] != ""
    assert len(list((out / "evaluation" / "heatmaps").glob("*.png"))) == 4
    predictions = json.loads((out / "evaluation" / "predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == 60 and all({"p_fake_lm", "p_fake_head"} <= set(row) for row in predictions)
    assert all("pixel_iou" in row for row in predictions if row["label"] == 1)

    print(f"\nLM AUROC untrained {float(before['lm_auroc']):.3f} -> trained {float(after['lm_auroc']):.3f}; "
          f"head AUROC {float(before['head_auroc']):.3f} -> {float(after['head_auroc']):.3f}; "
          f"pixel IoU {float(before['pixel_iou']):.3f} -> {float(after['pixel_iou']):.3f}")
    assert float(after["lm_auroc"]) >= 0.85
    assert float(after["lm_auroc"]) >= float(before["lm_auroc"]) + 0.3


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path):
    ws = tmp_path
    build_tiny_model(ws / "Qwen2.5-VL-7B-Instruct")
    make_demo_dataset(ws, n_train=40, n_test=8, frames_per_video=1, seed=0)
    base = {"image_size": 56, "fuse_dim": 32, "epochs": 2, "batch_size": 8, "grad_accum": 2, "num_workers": 0,
            "head_verdict_prompt": True}

    def train(name: str, **extra) -> Path:
        out = ws / name
        _run(ws, "--skip-eval", *_sets("--train-set", {
            **base, **extra, "output_dir": str(out), "train_log": str(out / "log.csv"),
            "lora_checkpoint": str(out / "final" / "adapter"), "head_checkpoint": str(out / "final" / "heads.safetensors"),
            "fusion_checkpoint": str(out / "final" / "fusion.safetensors")}))
        return out

    whole = train("whole")
    resumed = train("resumed", resume=str(whole / "epoch_0"))
    first, second = (list(csv.DictReader((run / "log.csv").open(encoding="utf-8"))) for run in (whole, resumed))
    assert [r["epoch"] for r in second] == ["1"]
    for key in ("step", "loss", "loss_lm", "loss_head"):
        assert second[0][key] == first[1][key], key
    for part in ("heads.safetensors", "fusion.safetensors", "adapter/adapter_model.safetensors"):
        a, b = (load_file(run / "final" / part) for run in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
