"""Task 2 end to end on the tiny model and synthetic data, through run_task2_experiment.py as the
user runs it (map -> LORA.py -> lora_infer.py): outputs in the documented places, and learning: the
trained adapter's answer-token AUROC beats the untrained adapter's by a clear margin."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model

RUNNER = Path(__file__).resolve().parents[1] / "Qwen_code" / "task2_lm_lora" / "run_task2_experiment.py"
# Short CPU run (~400 steps of 8 images at 112 px). LoRA sits on ViT block 1 (+ the merger): the tiny
# model is random, and its deep blocks keep little of the patch detail that separates the classes.
TRAIN = {"image_size": 112, "lora_target_blocks": [1], "training_args.num_train_epochs": 20,
         "training_args.learning_rate": 0.002, "training_args.per_device_train_batch_size": 8,
         "training_args.gradient_accumulation_steps": 1,
         "training_args.gradient_checkpointing": False, "training_args.save_strategy": "no",
         "training_args.logging_steps": 50, "training_args.disable_tqdm": True}
# Untrained adapter: one optimizer step at learning rate 0 leaves LoRA B at its zero init.
UNTRAINED = {**TRAIN, "training_args.learning_rate": 0.0, "training_args.max_steps": 1}
INFER = {"num_workers": 0, "batch_size": 30}
SEED_COLUMNS = ["timestamp", "dataset", "samples", "positive_ratio", "auroc", "acc", "f1", "lora_path",
                "base_model_path"]


def _sets(flag: str, values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in (flag, f"{k}={json.dumps(v)}")]


def _run(ws: Path, *extra: str) -> None:
    # One thread per process: on a shared 2-core machine torch's default two threads contend.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(RUNNER), "--root", str(ws), *extra], check=True, env=env)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.mark.slow
def test_trained_adapter_answers_better_than_untrained(tmp_path, capsys):
    ws = tmp_path
    build_tiny_model(ws / "Qwen2.5-VL-7B-Instruct")
    # The unmistakable manipulation only, so that about a CPU minute of training shows learning.
    make_demo_dataset(ws, n_train=200, n_test=60, frames_per_video=1, seed=0, kind_weights={"checker": 1.0})
    out = ws / "task2_lm_lora"
    untrained = ws / "untrained"

    _run(ws, *_sets("--train-set", {**UNTRAINED, "save_lora_path": str(untrained / "adapter")}),
         *_sets("--infer-set", {**INFER, "lora_path": str(untrained / "adapter"), "max_new_tokens": 2,
                                "csv_path": str(out / "evaluation" / "metrics.csv"),
                                "output_json": str(untrained / "predictions.json")}))
    _run(ws, "--skip-map", *_sets("--train-set", TRAIN), *_sets("--infer-set", INFER))

    header, rows = _rows(out / "evaluation" / "metrics.csv")
    assert header[: len(SEED_COLUMNS)] == SEED_COLUMNS
    assert header[len(SEED_COLUMNS): len(SEED_COLUMNS) + 4] == ["ap", "acc@tuned", "f1@tuned", "threshold"]
    before, after = rows
    assert before["lora_path"] == str(untrained / "adapter")
    assert after["lora_path"] == str(out / "training" / "lora_adapter")
    assert before["samples"] == after["samples"] == "60" and after["image_size"] == "112"
    with capsys.disabled():
        print(f"\nTask 2 demo-test answer-token AUROC: untrained adapter {float(before['auroc']):.3f}, "
              f"trained {float(after['auroc']):.3f}")
    assert float(after["auroc"]) > float(before["auroc"]) + 0.15
    assert float(after["auroc"]) > 0.7

    adapter = out / "training" / "lora_adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "resolved_config.json"]
    saved = json.loads((adapter / "resolved_config.json").read_text())
    assert (saved["image_size"], saved["fake_token"], saved["real_token"]) == (112, "Fake", "Real")
    assert saved["training_args"]["output_dir"] == str(out / "training" / "checkpoints")
    used = json.loads((out / "evaluation" / "resolved_config.json").read_text())
    assert (used["image_size"], used["prompt_text"]) == (112, saved["prompt_text"])

    predictions = json.loads((out / "evaluation" / "predictions.json").read_text())
    test_index = json.loads((ws / "data" / "testset2" / "annotation.json").read_text())
    assert [p["image_path"] for p in predictions] == [r["image_path"] for r in test_index]
    assert all(0.0 <= p["p_fake"] <= 1.0 and "generated_text" not in p for p in predictions)
    generated = json.loads((untrained / "predictions.json").read_text())
    assert all(isinstance(p["generated_text"], str) and p["generated_label"] in (0, 1, None) for p in generated)
    assert "generated_acc" in header
