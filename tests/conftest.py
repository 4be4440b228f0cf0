"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from scripts import demo_index, one_torch_thread, run_script

# The inputs every shipped config names by default, relative to the user's root.
DEFAULT_INPUTS = ("data/trainingset2/train_idx.json", "data/trainingset2/val_idx.json",
                  "data/trainingset2/annotation.json", "data/testset2/annotation.json")


def make_user_layout(root: Path) -> Path:
    """Empty stand-ins for the user's model folder and index files under ``root`` (for config tests:
    scripts check that every input exists before loading anything)."""
    (root / "Qwen2.5-VL-7B-Instruct").mkdir(parents=True, exist_ok=True)
    for rel in DEFAULT_INPUTS:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("[]\n")
    return root


@pytest.fixture(scope="module")
def single_thread():
    """For modules that run the tiny model (``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    with one_torch_thread():
        yield


@pytest.fixture
def user_layout():
    """:func:`make_user_layout`, for tests that lay out several roots."""
    return make_user_layout


@pytest.fixture
def user_root(tmp_path) -> Path:
    return make_user_layout(tmp_path / "root")


# ------------------------------------------------------------------ one checkpoint per task, made once
TINY_MODEL = "Qwen2.5-VL-7B-Instruct"
TINY_IMAGE_SIZE = 112


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Tiny model and demo data in the user's layout: 26 train / 6 val (3 fake, 3 real) / 12 test images."""
    root = tmp_path_factory.mktemp("tiny_root")
    build_tiny_model(root / TINY_MODEL)
    make_demo_dataset(root, n_train=32, n_test=12, frames_per_video=1)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_root) -> Path:
    """The tiny model folder inside ``tiny_root`` (read-only: tests load it, never write to it)."""
    return tiny_root / TINY_MODEL


@pytest.fixture(scope="session")
def task1_ckpt(tiny_root) -> Path:
    """lora_train.py, one optimizer step: the checkpoint folder ``final/``."""
    out = tiny_root / "t1_train"
    with one_torch_thread():
        run_script("lora_train", tiny_root, f"out_dir={out}", "train_log=log.csv", "final_trained_heads=final",
                   "max_steps=1", "epochs=1", "batch_size=8", "num_workers=0", f"image_size={TINY_IMAGE_SIZE}",
                   "visual_layers=[1]", "lora_target_layers=[1]", "fuse_dim=32", "ann_val=null")
    return out / "final"


@pytest.fixture(scope="session")
def task2_adapter(tiny_root) -> Path:
    """map.py then LORA.py, one optimizer step: the adapter folder."""
    out = tiny_root / "t2_train"
    with one_torch_thread():
        run_script("map", tiny_root)
        run_script("LORA", tiny_root, f"out_dir={out}", "save_lora_path=adapter", f"image_size={TINY_IMAGE_SIZE}",
                   "lora_target_blocks=[1]", "training_args.max_steps=1", "training_args.per_device_train_batch_size=4",
                   "training_args.gradient_accumulation_steps=1", "training_args.gradient_checkpointing=false",
                   "training_args.save_strategy=\"no\"", f"training_args.output_dir={out / 'hf'}")
    return out / "adapter"


@pytest.fixture(scope="session")
def task3_run(tiny_root) -> Path:
    """hybrid_train.py with the validation index (its log has val_* columns), one step; the output
    folder, whose ``final/`` holds adapter/, heads.safetensors and fusion.safetensors."""
    out = tiny_root / "t3_train"
    with one_torch_thread():
        run_script("hybrid_train", tiny_root, f"output_dir={out}", "train_log=log.csv",
                   "lora_checkpoint=final/adapter", "head_checkpoint=final/heads.safetensors",
                   "fusion_checkpoint=final/fusion.safetensors", f"ann_val={demo_index(tiny_root, 'val')}",
                   "max_steps=1", "epochs=1", "batch_size=8", "grad_accum=1", "num_workers=0",
                   f"image_size={TINY_IMAGE_SIZE}", "visual_layers=[1]", "lora.visual.blocks=[1]", "fuse_dim=32",
                   "gradient_checkpointing=false")
    return out
