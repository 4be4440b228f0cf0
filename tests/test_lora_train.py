"""Task 1 end to end on the tiny model: first-step gradients, checkpoint reload in a new process,
strict loading, the seed README's commands, learnability (several processes: tests/test_distributed.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from unittest import mock
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from qwen_forensics.checkpoints.task1 import attach_task1_checkpoint
from qwen_forensics.data.collate import ImageBatchCollator
from qwen_forensics.data.dataset import ForgeryDataset
from qwen_forensics.data.records import load_index
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.model.forensic import ForensicViT
from qwen_forensics.model.loader import load_processor, load_vision_tower
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
T1 = REPO / "Qwen_code" / "task1_modular_lora"
TRAIN = T1 / "lora_train.py"
HEAD_EVAL = T1 / "subtask_vit_head_eval" / "lora_eval.py"
FULL_EVAL = T1 / "subtask_full_model_eval" / "full_model_eval.py"
MODEL = "Qwen2.5-VL-7B-Instruct"
IMAGE_SIZE = 112
# One thread per process: the tiny model's ops are too small to gain from threads, and 2-process
# runs on 2 cores would otherwise oversubscribe them.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


lora_train = load_script("lora_train")


pytestmark = pytest.mark.usefixtures("single_thread")


def _run(command: list[str], *, cwd: Path = REPO, env: dict | None = None, timeout: int = 300):
    done = subprocess.run(command, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The seed's layout: <root>/Qwen2.5-VL-7B-Instruct and <root>/data (40 train, 8 val, 22 test)."""
    root = tmp_path_factory.mktemp("task1_ws")
    build_tiny_model(root / MODEL)
    make_demo_dataset(root, n_train=48, n_test=22)
    return root


def _train_args(root: Path, out: Path, *overrides: str) -> list[str]:
    return ["--root", str(root), *_sets(f"out_dir={out}", f"train_log={out / 'train_log.csv'}",
                                        f"final_trained_heads={out / 'final'}", "num_workers=0", "batch_size=4",
                                        f"image_size={IMAGE_SIZE}", "ann_val=null", *overrides)]


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    """Two optimizer steps of lora_train.py in this process, with the gradients seen before each step
    and the trained model object (the in-memory reference for the reload test)."""
    out = tmp_path_factory.mktemp("task1_train")
    models: list[ForensicViT] = []
    grads: list[dict[str, torch.Tensor | None]] = []

    class RecordingForensicViT(ForensicViT):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    def before_step(optimizer, args, kwargs):
        grads.append({n: None if p.grad is None else p.grad.detach().clone()
                      for n, p in models[-1].named_parameters() if p.requires_grad})

    handle = register_optimizer_step_pre_hook(before_step)
    # The script imports its model class inside main: patched where it is defined.
    try:
        with mock.patch("qwen_forensics.model.forensic.ForensicViT", RecordingForensicViT):
            # No warm-up: with it the first step's learning rate is 0, and LoRA A would still see B = 0 at step 2.
            lora_train.main(_train_args(workspace, out, "max_steps=2", "warmup_ratio=0"))
    finally:
        handle.remove()
    return {"model": models[-1], "grads": grads, "ckpt": out / "final"}


def test_every_lora_and_head_tensor_gets_a_gradient(trained):
    first, second = trained["grads"]
    lora = [n for n in first if "lora_" in n]
    heads = [n for n in first if n.startswith("heads.")]
    assert sorted(lora + heads) == sorted(first), "only LoRA and head parameters may train"
    assert len(lora) == 4 * 5 * 2  # blocks 7/15/23/31 x qkv, proj, gate/up/down_proj x (A, B)
    assert "heads.pool.p" in heads and len(heads) > 10

    def moved(g):
        return g is not None and bool(g.abs().sum() > 0)

    assert [n for n in heads if not moved(first[n])] == []
    assert [n for n in lora if "lora_B" in n and not moved(first[n])] == []
    # LoRA B starts at zero, so A's first gradient (B^T times the output gradient) is exactly zero;
    # once B has moved, every A receives one too.
    assert all(first[n] is not None and not first[n].any() for n in lora if "lora_A" in n)
    assert [n for n in first if not moved(second[n])] == []


def _fixed_batch(workspace: Path, count: int = 6) -> dict[str, torch.Tensor]:
    records = load_index(workspace / "data" / "testset2" / "annotation.json")[:count]
    dataset = ForgeryDataset(records, workspace / "data", IMAGE_SIZE)
    batch = ImageBatchCollator(load_processor(workspace / MODEL, IMAGE_SIZE))([dataset[i] for i in range(count)])
    return {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}


RELOAD = """
import sys
import numpy as np
import torch
from qwen_forensics.model.loader import load_vision_tower
from qwen_forensics.checkpoints.task1 import attach_task1_checkpoint

model_dir, ckpt, batch_file, out_file = sys.argv[1:]
model = attach_task1_checkpoint(load_vision_tower(model_dir, dtype="float32"), ckpt).eval()
batch = torch.load(batch_file, weights_only=True)
with torch.no_grad():
    out = model(batch["pixel_values"], batch["image_grid_thw"])
np.savez(out_file, p=torch.sigmoid(out["cls_logit"]).numpy(), heat=torch.sigmoid(out["heatmap_logit"]).numpy())
"""


def test_checkpoint_reloads_in_a_new_process(trained, workspace, tmp_path):
    batch = _fixed_batch(workspace)
    model = trained["model"].eval()
    with torch.no_grad():
        out = model(batch["pixel_values"], batch["image_grid_thw"])
    torch.save(batch, tmp_path / "batch.pt")
    _run([sys.executable, "-c", RELOAD, str(workspace / MODEL), str(trained["ckpt"]), str(tmp_path / "batch.pt"),
          str(tmp_path / "out.npz")])
    reloaded = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(reloaded["p"], torch.sigmoid(out["cls_logit"]).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(reloaded["heat"], torch.sigmoid(out["heatmap_logit"]).numpy(), atol=1e-5, rtol=0)
    assert reloaded["heat"].shape == (6, IMAGE_SIZE // 14, IMAGE_SIZE // 14)


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def _drop_one(pattern: str):
    def edit(tensors):
        del tensors[next(k for k in sorted(tensors) if pattern in k)]
    return edit


def _rename_one(pattern: str, new: str):
    def edit(tensors):
        old = next(k for k in sorted(tensors) if pattern in k)
        tensors[old.replace(pattern, new)] = tensors.pop(old)
    return edit


@pytest.mark.parametrize("file, edit, expected", [
    ("adapter/adapter_model.safetensors", _drop_one("blocks.15.mlp.up_proj.lora_B"),
     r"adapter_model\.safetensors does not match the model:\n  missing from the file \(1\): "
     r"\['blocks\.15\.mlp\.up_proj\.lora_B\.weight'\]"),
    ("adapter/adapter_model.safetensors", _rename_one("blocks.7.attn.qkv.lora_A", "blocks.7.attn.qkv.lora_a"),
     r"missing from the file \(1\).*\n  unexpected in the file \(1\): \['blocks\.7\.attn\.qkv\.lora_a\.weight'\]"),
    ("heads.safetensors", _drop_one("classifier.0.weight"),
     r"heads\.safetensors does not match the model:\n  missing from the file \(1\): \['classifier\.0\.weight'\]"),
    ("heads.safetensors", _rename_one("evidence.2.bias", "evidence.3.bias"),
     r"unexpected in the file \(1\): \['evidence\.3\.bias'\]"),
])
def test_missing_or_renamed_tensor_fails_loudly(trained, workspace, tmp_path, file, edit, expected):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained["ckpt"], ckpt)
    _rewrite(ckpt / file, edit)
    with pytest.raises(ValueError, match=expected):
        attach_task1_checkpoint(load_vision_tower(workspace / MODEL, dtype="float32"), ckpt)


def test_head_eval_cli_refuses_a_broken_checkpoint(trained, workspace, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained["ckpt"], ckpt)
    _rewrite(ckpt / "heads.safetensors", _drop_one("fuse.1.weight"))
    done = subprocess.run([sys.executable, str(HEAD_EVAL), "--root", str(workspace),
                           *_sets(f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'eval'}", "num_workers=0")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"{ckpt / 'heads.safetensors'} does not match the model" in done.stderr
    assert not (tmp_path / "eval" / "metrics.csv").exists()


def test_head_eval_skips_bad_records_and_reports_the_count(trained, workspace, tmp_path):
    """on_bad_sample=skip: a missing image and a bad "HxW" are listed and counted, the rest is scored."""
    test_index = json.loads((workspace / "data" / "testset2" / "annotation.json").read_text())
    broken = test_index + [{"image_path": "testset2/image/gone.jpg", "mask_path": "720x1280", "label": 0},
                           {**next(r for r in test_index if r["label"] == 0), "mask_path": "720by1280"}]
    index = tmp_path / "broken.json"
    index.write_text(json.dumps(broken))
    out = tmp_path / "eval"
    _run([sys.executable, str(HEAD_EVAL), *_head_eval_args(workspace, trained["ckpt"], out),
          *_sets(f"ann_test={index}", "on_bad_sample=skip")])
    row = _csv_rows(out / "metrics.csv")[-1]
    # The second record repeats a good record's image with a bad size: one skipped record, two problems.
    assert int(row["num_skipped"]) == 2
    assert int(row["samples"]) == len(test_index)
    skipped = json.loads((out / "skipped_test" / "skipped_records.json").read_text())
    assert skipped["num_skipped"] == len(skipped["skipped"]) == 2


def _head_eval_args(root: Path, ckpt: Path, out: Path) -> list[str]:
    return ["--root", str(root), *_sets(f"ckpt_path={ckpt}", f"out_dir={out}", f"csv_path={out / 'metrics.csv'}",
                                        "num_workers=0", "batch_size=4", "num_heatmaps=2")]


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_seed_readme_commands_with_root_override(workspace, tmp_path):
    """The README's Task 1 commands, verbatim from the repo root, plus --root and small overrides."""
    root = ["--root", str(workspace)]
    fast = _sets("num_workers=0", "batch_size=4")
    _run([sys.executable, "Qwen_code/task1_modular_lora/lora_train.py",
          "--config", "Qwen_code/task1_modular_lora/config_lora.json", *root, *fast, *_sets("epochs=1", "image_size=224")])
    out = workspace / "task1_modular_lora"
    assert {"final", "best_by_AUROC", "best_by_IoU", "epoch_0"} <= {p.name for p in (out / "training").iterdir()}
    assert len(_csv_rows(out / "training" / "train_log.csv")) == 1

    _run([sys.executable, "Qwen_code/task1_modular_lora/subtask_full_model_eval/full_model_eval.py",
          "--config", "Qwen_code/task1_modular_lora/subtask_full_model_eval/config_full_model_eval.json", *root, *fast])
    full_row = _csv_rows(out / "subtask_full_model_eval" / "metrics.csv")[-1]
    assert int(full_row["samples"]) == 22 and int(full_row["image_size"]) == 224
    assert len(json.loads((out / "subtask_full_model_eval" / "predictions.json").read_text())) == 22

    # Subtask 1 through its one-click runner (which runs lora_eval.py with the shipped config_eval.json),
    # from another working directory, reusing the checkpoint.
    _run([sys.executable, str(T1 / "run_subtask_vit_head_experiment.py"), *root, "--skip-train",
          "--eval-set", "num_workers=0", "--eval-set", "batch_size=4"], cwd=tmp_path)
    head_row = _csv_rows(out / "subtask_vit_head_eval" / "metrics.csv")[-1]
    assert int(head_row["samples"]) == 22 and int(head_row["image_size"]) == 224
    assert len(list((out / "subtask_vit_head_eval" / "heatmaps").glob("*.png"))) == 16


# Recipe for the learnability test, tuned on this data (checker fakes, 160 train / 60 test images):
# block 1 keeps the patch-level detail that the deeper random blocks of the tiny tower mix away,
# and a narrow fused map (64 channels) keeps each CPU step cheap. Measured test AUROC 0.999-1.0 and
# pixel IoU 0.74-0.77 over seeds 1, 2 and 42, 8 epochs in 40-90 s on 2 shared cores.
LEARNABILITY_RECIPE = ("image_size=224", "batch_size=8", "lr_head=0.01", "lr_lora=0.002", "epochs=8", "fuse_dim=64",
                       "visual_layers=[1]", "lora_target_layers=[1]", "ann_val=null", "num_workers=1")


@pytest.mark.slow
def test_learnability_on_unmistakable_fakes(tmp_path):
    build_tiny_model(tmp_path / MODEL)
    make_demo_dataset(tmp_path, n_train=200, n_test=60, frames_per_video=1, kind_weights={"checker": 1.0})
    start = time.perf_counter()
    _run([sys.executable, str(TRAIN), "--root", str(tmp_path), *_sets(*LEARNABILITY_RECIPE)], timeout=600)
    trained_s = time.perf_counter() - start
    _run([sys.executable, str(HEAD_EVAL), "--root", str(tmp_path), *_sets("num_workers=0", "batch_size=16")])
    row = _csv_rows(tmp_path / "task1_modular_lora" / "subtask_vit_head_eval" / "metrics.csv")[-1]
    auroc, iou = float(row["auroc"]), float(row["pixel_iou"])
    print(f"learnability: test AUROC {auroc:.3f}, pixel IoU {iou:.3f}, training {trained_s:.0f} s")
    assert int(row["samples"]) == 60
    assert auroc >= 0.95, row
    assert iou >= 0.6, row


def test_every_training_writes_its_curves_page(task1_ckpt, task2_adapter, task3_run):
    """training.html beside each training's outputs: Task 1 and 3 from their CSV log (Task 3 with its
    validation metrics), Task 2 from the Trainer's log."""
    from browser import Page
    pages = {"task1": task1_ckpt.parent / "training.html", "task2": task2_adapter.parent / "training.html",
             "task3": task3_run / "training.html"}
    for name, page in pages.items():
        assert page.is_file(), name
    task3 = Page(pages["task3"].read_text(encoding="utf-8"))
    assert "val_lm_auroc" in dict(task3.table(first_header="column")[1:])
    task2 = Page(pages["task2"].read_text(encoding="utf-8"))
    assert "train_loss" in dict(task2.table(first_header="column")[1:])


def test_printed_epoch_line_leaves_out_metrics_that_were_not_computed():
    """Without a validation set the val_* values are NaN: the printed line leaves them out (the training
    log CSV keeps the columns), and every computed value is printed with 4 significant digits."""
    from qwen_forensics.training.loop import format_row

    line = format_row({"epoch": 0, "loss": 1.23456, "val_auroc": float("nan"), "run_id": "r1"})
    assert line == "epoch=0 loss=1.235 run_id=r1"
