"""Task 1 subtask 2 (full_model_eval.py) and the shared answer-token scoring (evaluation.score_answers) on the tiny model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from peft import inject_adapter_in_model
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from qwen_forensics.checkpoints.adapters import save_adapter
from qwen_forensics.checkpoints.task1 import attach_task1_lora
from qwen_forensics.checkpoints.tensors import write_resolved_config
from qwen_forensics.data.collate import VisionLanguageCollator, generate_inputs
from qwen_forensics.data.dataset import ForgeryDataset
from qwen_forensics.data.records import load_index
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation.metrics import tune_threshold
from qwen_forensics.evaluation.outputs import keyword_label
from qwen_forensics.evaluation.predictions import score_answers
from qwen_forensics.model.loader import get_visual, load_model, load_processor, load_vision_tower
from qwen_forensics.model.lora import make_lora_config
from qwen_forensics.model.lora_targets import vision_block_targets
from qwen_forensics.prompts import DEFAULT_PROMPT, answer_token_ids
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "Qwen_code" / "task1_modular_lora" / "subtask_full_model_eval" / "full_model_eval.py"
SEED_COLUMNS = ["timestamp", "dataset", "samples", "positive_ratio", "auroc", "acc@0.5", "f1@0.5", "lora_checkpoint",
                "model_path"]
IMAGE_SIZE = 112
LORA_BLOCKS = [7, 15, 23, 31]


full_model_eval = load_script("full_model_eval")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Tiny model and a small demo set under the seed's folder names, plus a Task 1 visual adapter."""
    root = tmp_path_factory.mktemp("full_eval_ws")
    build_tiny_model(root / "Qwen2.5-VL-7B-Instruct")
    make_demo_dataset(root, n_train=8, n_test=6, frames_per_video=1)
    _write_visual_lora(root / "Qwen2.5-VL-7B-Instruct", root / "ckpt")
    return root


def _write_visual_lora(model_dir: Path, ckpt: Path) -> None:
    """A checkpoint folder as lora_train.py writes it, as far as subtask 2 reads it: the tower's
    adapter and the resolved config. LoRA B is randomised so the adapter visibly moves the answer."""
    visual = load_vision_tower(model_dir, dtype="float32")
    targets = vision_block_targets(visual, LORA_BLOCKS)
    inject_adapter_in_model(make_lora_config(targets, r=8, alpha=16, dropout=0.05), visual)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    save_adapter(visual, ckpt / "adapter")
    write_resolved_config(ckpt, {"image_size": IMAGE_SIZE})


def _argv(root: Path, out: Path, *overrides: str) -> list[str]:
    args = ["--root", str(root), "--set", f"lora_checkpoint={root / 'ckpt'}", "--set", "num_workers=0",
            "--set", "batch_size=4", "--set", f"csv_path={out / 'metrics.csv'}",
            "--set", f"output_json={out / 'predictions.json'}", "--set", "torch_dtype=float32"]
    for override in overrides:
        args += ["--set", override]
    return args


def _run(root: Path, out: Path, *overrides: str) -> tuple[list[dict], list[dict]]:
    full_model_eval.main(_argv(root, out, *overrides))
    rows = json.loads((out / "predictions.json").read_text())
    with (out / "metrics.csv").open(newline="") as f:
        return rows, list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(workspace):
    """The full model with the adapter, its processor and answer ids, loaded independently of the script."""
    model = load_model(workspace / "Qwen2.5-VL-7B-Instruct", dtype="float32")
    attach_task1_lora(model, workspace / "ckpt")
    model.eval()  # the injected LoRA dropout modules start in training mode
    processor = load_processor(workspace / "Qwen2.5-VL-7B-Instruct", IMAGE_SIZE)
    return model, processor, answer_token_ids(processor)


def _generate_first_step(model, batch, fake_id: int, real_id: int) -> np.ndarray:
    out = model.generate(**generate_inputs(batch), max_new_tokens=1, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return torch.softmax(out.logits[0][:, [fake_id, real_id]].float(), dim=-1)[:, 0].numpy()


def test_batched_probabilities_equal_per_image_generate(workspace, tmp_path, reference):
    rows, _ = _run(workspace, tmp_path)
    model, processor, (fake_id, real_id) = reference
    records = load_index(workspace / "data" / "testset2" / "annotation.json")
    assert [r["image_path"] for r in rows] == [r.image_path for r in records]
    dataset = ForgeryDataset(records, workspace / "data", IMAGE_SIZE)
    collate = VisionLanguageCollator(processor, DEFAULT_PROMPT)
    with torch.no_grad():
        single = np.concatenate([_generate_first_step(model, collate([dataset[i]]), fake_id, real_id)
                                 for i in range(len(dataset))])
    batched = np.array([r["p_fake"] for r in rows])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    logits = np.array([[r["logit_fake"], r["logit_real"]] for r in rows])
    np.testing.assert_allclose(batched, 1 / (1 + np.exp(logits[:, 1] - logits[:, 0])), atol=1e-6)
    # The adapter is on the tower the LM reads: without it the answers differ.
    base = load_model(workspace / "Qwen2.5-VL-7B-Instruct", dtype="float32")
    with torch.no_grad():
        plain = _generate_first_step(base, collate([dataset[i] for i in range(len(dataset))]), fake_id, real_id)
    assert np.abs(plain - batched).max() > 1e-3


def test_generated_text_is_an_extra_column(workspace, tmp_path):
    plain, _ = _run(workspace, tmp_path / "plain")
    talk, csv_rows = _run(workspace, tmp_path / "talk", "max_new_tokens=3")
    assert [r["p_fake"] for r in talk] == [r["p_fake"] for r in plain]
    assert all("generated_text" not in r for r in plain)
    assert all(isinstance(r["generated_text"], str) and "generated_label" in r for r in talk)
    assert int(csv_rows[-1]["generated_undecided"]) == sum(r["generated_label"] is None for r in talk)


def test_csv_columns_tuned_threshold_and_letterbox_from_checkpoint(workspace, tmp_path, reference):
    val_index = workspace / "data" / "trainingset2" / "val_idx.json"
    rows, csv_rows = _run(workspace, tmp_path, f"val_annotation_file={val_index}")
    with (tmp_path / "metrics.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(SEED_COLUMNS)] == SEED_COLUMNS
    assert {"ap", "acc@tuned", "f1@tuned", "threshold", "images_per_s"} <= set(header)
    row = csv_rows[-1]
    assert int(row["image_size"]) == IMAGE_SIZE
    assert row["lora_checkpoint"] == str(workspace / "ckpt")
    assert int(row["samples"]) == len(rows) == 6

    model, processor, (fake_id, real_id) = reference
    val_records = load_index(val_index)
    loader = DataLoader(ForgeryDataset(val_records, workspace / "data", IMAGE_SIZE), batch_size=3,
                        collate_fn=VisionLanguageCollator(processor, DEFAULT_PROMPT))
    val = score_answers(model, loader, Accelerator(), fake_token_id=fake_id, real_token_id=real_id,
                        num_records=len(val_records))
    threshold = tune_threshold([r.label for r in val_records], val.p_fake)
    assert float(row["threshold"]) == pytest.approx(threshold, abs=1e-6)
    labels = [r["label"] for r in rows]
    assert float(row["acc@tuned"]) == pytest.approx(np.mean([r["pred@tuned"] == y for r, y in zip(rows, labels)]))
    assert float(row["acc@0.5"]) == pytest.approx(np.mean([(r["p_fake"] >= 0.5) == y for r, y in zip(rows, labels)]))


def test_answer_word_that_is_not_one_token_is_a_clear_error(workspace, tmp_path):
    with pytest.raises(SystemExit, match=r"fake_token='Forgery'.*not a single token"):
        full_model_eval.main(_argv(workspace, tmp_path, "fake_token=Forgery"))
    with pytest.raises(SystemExit, match="same token"):
        full_model_eval.main(_argv(workspace, tmp_path, "real_token=Fake"))


def test_adapter_loads_strictly_and_only_onto_the_tower(workspace, tmp_path):
    broken = tmp_path / "renamed"
    shutil.copytree(workspace / "ckpt", broken)
    weights = broken / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    old = next(k for k in tensors if "blocks.15.attn.qkv.lora_A" in k)
    tensors[old.replace("lora_A", "lora_A_old")] = tensors.pop(old)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors does not match the model"):
        full_model_eval.main(_argv(workspace, tmp_path, f"lora_checkpoint={broken}"))

    # An adapter named from the full model's root (Tasks 2/3) is not a Task 1 visual LoRA.
    model = load_model(workspace / "Qwen2.5-VL-7B-Instruct", dtype="float32")
    prefix = "model.visual."
    targets = [prefix + t for t in vision_block_targets(get_visual(model), [7])]
    inject_adapter_in_model(make_lora_config(targets, r=8, alpha=16, dropout=0.0), model)
    save_adapter(model, tmp_path / "rooted" / "adapter")
    with pytest.raises(ValueError, match="not a Task 1 visual LoRA"):
        attach_task1_lora(load_model(workspace / "Qwen2.5-VL-7B-Instruct", dtype="float32"), tmp_path / "rooted")


def test_seed_lora_keys_are_reported_and_the_adapters_settings_used(workspace, tmp_path, capsys):
    """The seed's eval configs repeat the LoRA settings; the earlier scripts used them only as fallbacks,
    so a value that differs from the checkpoint is reported and the checkpoint's settings are loaded."""
    rows, _ = _run(workspace, tmp_path, "lora_r=8", "lora_alpha=16", "lora_dropout=0.05",
                   f"lora_target_layers={json.dumps(LORA_BLOCKS)}")
    assert len(rows) == 6 and "trained with" not in capsys.readouterr().out
    other, _ = _run(workspace, tmp_path / "other", "lora_r=4", "lora_target_layers=[7]")
    out = capsys.readouterr().out
    assert "config lora_r=4 but the checkpoint" in out and "was trained with 8" in out
    assert "config lora_target_layers=[7] but the checkpoint" in out and "[7, 15, 23, 31]" in out
    assert [r["p_fake"] for r in other] == [r["p_fake"] for r in rows]


def _image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_score_answers_on_padded_native_resolution_batches(workspace, reference):
    """Task 2 may keep native resolution: rows then differ in length and are left-padded."""
    model, _, (fake_id, real_id) = reference
    processor = load_processor(workspace / "Qwen2.5-VL-7B-Instruct", None)
    items = [{"image": _image(h, w, i), "label": i % 2, "position": i}
             for i, (h, w) in enumerate([(112, 112), (56, 112), (84, 140), (56, 56), (112, 84)])]
    collate = VisionLanguageCollator(processor, DEFAULT_PROMPT)
    batches = [collate(items[:3]), collate(items[3:])]
    assert (batches[0]["attention_mask"] == 0).any()
    scores = score_answers(model, batches, Accelerator(), fake_token_id=fake_id, real_token_id=real_id,
                           num_records=len(items), max_new_tokens=2, tokenizer=processor.tokenizer)
    with torch.no_grad():
        single = np.concatenate([_generate_first_step(model, collate([item]), fake_id, real_id) for item in items])
    np.testing.assert_allclose(scores.p_fake, single, atol=1e-4, rtol=0)
    assert len(scores.generated) == len(items)
    with pytest.raises(KeyError, match="position"):
        score_answers(model, [collate([{"image": _image(56, 56, 0), "label": 0}])], Accelerator(),
                      fake_token_id=fake_id, real_token_id=real_id, num_records=1)


def test_keyword_label():
    assert keyword_label("Fake", "Fake", "Real") == 1
    assert keyword_label("real.", "Fake", "Real") == 0
    assert keyword_label("It is fake, not real", "Fake", "Real") is None
    assert keyword_label("Unclear", "Fake", "Real") is None
    assert keyword_label("Fakes", "Fake", "Real") is None
