"""The user's own config files (``tests/data/seed_configs``, copies of ``../shared/seed/configs``) run
through the real scripts, unchanged except for ``--root`` and ``--set`` cuts of epochs, steps and
loader workers, on the tiny model (28 LM layers, as in the 7B, because the Task 3 file names LM
layers 24-27) and the demo data. Each next step consumes what the previous one wrote, by the names
in the user's files. Where the user's files name different paths for one link (they come from
different versions of the earlier scripts), the unchanged run must stop before any model loads,
naming the key and the path; the test then points that one key at what the previous step wrote.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from scripts import csv_rows, load_script, run_script

REPO = Path(__file__).resolve().parents[1]
CODE = REPO / "Qwen_code"
SEED = Path(__file__).resolve().parent / "data" / "seed_configs"
SHARED_SEED = REPO.parent / "shared" / "seed" / "configs"
MODEL = "Qwen2.5-VL-7B-Instruct"
CUTS = ("num_workers=0",)


# Paths opened while an audited script runs (sys.addaudithook cannot be removed; it records only
# while the flag is set).
_OPENED: list[str] = []
_AUDITING = [False]


def _audit(event: str, args) -> None:
    if _AUDITING[0] and event == "open" and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def run(script: str, config: str, root: Path, *sets: str, audit: bool = False) -> str:
    """Run a script's ``main`` in this process with one of the user's config files; returns what it printed."""
    module = load_script(script)
    _OPENED.clear()
    _AUDITING[0] = audit
    try:
        return run_script(script, root, *sets, config=SEED / config, module=module)
    finally:
        _AUDITING[0] = False


def adapter_targets(adapter_dir: Path) -> set[str]:
    """The module names an adapter wraps (its config holds them as one exact-match regex)."""
    pattern = json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]
    return {re.sub(r"\\(.)", r"\1", name) for name in pattern.removeprefix("(?:").removesuffix(")").split("|")}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed_root")
    build_tiny_model(root / MODEL, text_layers=28)
    make_demo_dataset(root, n_train=16, n_test=8, frames_per_video=2)
    return root


def test_the_copies_are_the_users_files():
    names = sorted(p.name for p in SEED.glob("*.json"))
    assert len(names) == 8
    if not SHARED_SEED.is_dir():
        pytest.skip(f"{SHARED_SEED} not found (shared/ is a sibling of the repo clone)")
    assert names == sorted(p.name for p in SHARED_SEED.glob("*.json"))
    for name in names:
        assert (SEED / name).read_bytes() == (SHARED_SEED / name).read_bytes(), name


# --------------------------------------------------------------------------------------------- Task 1
@pytest.fixture(scope="module")
def task1_trained(root):
    printed = run("lora_train", "task1_config_lora.json", root, "epochs=1", "max_steps=2", *CUTS, audit=True)
    return {"opened": list(_OPENED), "printed": printed}


def test_task1_training_writes_the_users_names_and_reads_no_unnamed_file(root, task1_trained):
    out = root / "outputs_lora_joint"
    ckpt = out / "final_trained_heads_2_all"
    assert (ckpt / "heads.safetensors").is_file() and (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "final_trained_heads_2_all.pt").exists()
    assert len(csv_rows(out / "train_log_lora_joint.csv")) == 1
    assert {f"blocks.{b}.attn.qkv" for b in range(32)} <= adapter_targets(ckpt / "adapter"), "lora_target_layers 0..31"
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["ann_val"] is None and resolved["config_sources"]["ann_val"] == "off (not in the config)"
    assert any("final_trained_heads_2_all.pt is written as the checkpoint folder" in n for n in resolved["config_notes"])
    assert "final_trained_heads_2_all.pt is written as the checkpoint folder" in task1_trained["printed"]
    # The config names no validation index: the val_idx.json next to train_idx.json is never opened.
    opened = [p for p in task1_trained["opened"] if str(root / "data") in p]
    assert any(p.endswith("train_idx.json") for p in opened)
    assert not any(p.endswith("val_idx.json") for p in opened), opened


def test_task1_eval_configs_name_another_checkpoint_and_stop_before_loading(root, task1_trained):
    for script, config, key in (("lora_eval", "task1_subtask_vit_head_eval_config_eval.json", "ckpt_path"),
                                ("full_model_eval", "task1_subtask_full_model_eval_config_full_model_eval.json",
                                 "lora_checkpoint")):
        with pytest.raises(SystemExit) as stop:
            run(script, config, root, *CUTS)
        message = str(stop.value)
        assert message.startswith("config error") and f"{key} = '/root/autodl-tmp/task1_modular_lora/training/" \
                                                      "modular_vit_lora.pt'" in message
        assert str(root / "task1_modular_lora/training/modular_vit_lora") in message


def test_task1_head_eval_reads_the_trained_pt_name(root, task1_trained):
    ckpt = root / "outputs_lora_joint" / "final_trained_heads_2_all.pt"
    out = run("lora_eval", "task1_subtask_vit_head_eval_config_eval.json", root, f"ckpt_path={ckpt}", *CUTS)
    assert "config lora_r=16 but the checkpoint" in out and "lora_target_layers=[7, 15, 23, 31]" in out
    eval_dir = root / "task1_modular_lora" / "subtask_vit_head_eval"
    rows = json.loads((eval_dir / "inference_results.json").read_text())
    assert len(rows) == 8 and {"p_fake", "pixel_iou"} <= set(next(r for r in rows if r["label"] == 1))
    metrics, = csv_rows(eval_dir / "metrics.csv")
    assert metrics["ckpt_path"] == str(ckpt.with_suffix("")) and float(metrics["samples"]) == 8


def test_task1_full_model_eval_reads_the_instruct_answer_token(root, task1_trained):
    ckpt = root / "outputs_lora_joint" / "final_trained_heads_2_all.pt"
    out = run("full_model_eval", "task1_subtask_full_model_eval_config_full_model_eval.json", root,
              f"lora_checkpoint={ckpt}", *CUTS)
    assert "answer word ' Fake' has surrounding whitespace" in out
    eval_dir = root / "task1_modular_lora" / "subtask_full_model_eval"
    metrics, = csv_rows(eval_dir / "metrics.csv")
    assert (metrics["fake_token"], metrics["real_token"]) == ("Fake", "Real")
    assert "generated_acc" in metrics, "max_new_tokens 4 adds the generated-text columns"
    assert len(json.loads((eval_dir / "predictions.json").read_text())) == 8


# --------------------------------------------------------------------------------------------- Task 2
@pytest.fixture(scope="module")
def task2_adapter(root):
    run("map", "task2_config_map.json", root)
    mapped = root / "task2_lm_lora" / "datasets" / "train_dataset_mapped"
    with pytest.raises(SystemExit) as stop:
        run("LORA", "task2_config_lora_trainer.json", root)
    run("LORA", "task2_config_lora_trainer.json", root, f"train_dataset_path={mapped}",
        "training_args.max_steps=2", "training_args.gradient_accumulation_steps=2")
    return str(stop.value)


def test_task2_map_converts_both_datasets_of_the_list(root, task2_adapter):
    datasets = root / "task2_lm_lora" / "datasets"
    for name, count in (("train", 16), ("test", 8)):
        lines = (datasets / f"{name}_dataset_mapped" / "records.jsonl").read_text().splitlines()
        assert len(lines) == count
        record = json.loads(lines[0])
        question = record["messages"][0]["content"][1]["text"]
        assert question == "Please determine whether this image is Real or Fake. Answer only with Fake or Real."
        assert record["messages"][1]["content"][0]["text"] == ("Fake" if record["label"] else "Real")
        assert (datasets / f"{name}_batches" / "map_manifest.json").is_file()


def test_task2_trainer_names_another_dataset_and_stops_before_loading(root, task2_adapter):
    assert task2_adapter.startswith("config error")
    assert "train_dataset_path = '/root/autodl-tmp/qwen2.5-vl-lora/Qwen_code/datasets/train_dataset_mapped'" \
        in task2_adapter
    assert str(root / "qwen2.5-vl-lora/Qwen_code/datasets/train_dataset_mapped/records.jsonl") in task2_adapter


def test_task2_training_writes_the_adapter_the_infer_config_names(root, task2_adapter):
    adapter = root / "task2_lm_lora" / "training" / "lora_adapter"
    saved = json.loads((adapter / "resolved_config.json").read_text())
    assert (saved["fake_token"], saved["real_token"]) == ("Fake", "Real")
    assert saved["training_args"]["fp16"] is False, "fp16 on a CPU run is switched off"
    assert saved["training_args"]["output_dir"] == str(root / "task2_lm_lora/training/hf_trainer")
    targets = adapter_targets(adapter)
    assert {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2", "model.visual.blocks.7.attn.qkv"} <= targets


def test_task2_test_dataset_object_is_evaluated_during_training(root, task2_adapter, tmp_path):
    """The earlier LORA.py's ``test_dataset`` object (an index) is an evaluation set during training."""
    mapped = root / "task2_lm_lora" / "datasets" / "train_dataset_mapped"
    spec = {"annotation_file": str(root / "data/testset2/annotation.json"), "dataset_limit": 6}
    out = run("LORA", "task2_config_lora_trainer.json", root, f"train_dataset_path={mapped}",
              f"test_dataset={json.dumps(spec)}", "training_args.num_train_epochs=1",
              "training_args.gradient_accumulation_steps=8", "training_args.per_device_eval_batch_size=3",
              f"training_args.output_dir={tmp_path / 'hf'}",
              f"save_lora_path={tmp_path / 'adapter'}")
    assert "evaluating (eval_loss) after every epoch" in out
    assert re.search(r"'eval_loss': '?[0-9.]+", out), "the Trainer evaluated the test set"


def test_task2_infer_reads_the_trained_answer_token_not_the_configured_one(root, task2_adapter):
    """The user's infer config asks for " Fake" / " Real"; the adapter was trained on "Fake" / "Real".
    The trained tokens are read, with a note naming both, and the scores equal a run that names them."""
    out = run("lora_infer", "task2_config_lora_infer.json", root, *CUTS)
    assert "fake_token=' Fake' is not the answer word the adapter was trained with ('Fake')" in out
    assert "real_token=' Real' is not the answer word the adapter was trained with ('Real')" in out
    eval_dir = root / "task2_lm_lora" / "evaluation"
    first = json.loads((eval_dir / "predictions.json").read_text())
    out = run("lora_infer", "task2_config_lora_infer.json", root, *CUTS, "fake_token=Fake", "real_token=Real",
              "output_json=named.json", "csv_path=named.csv")
    assert "not the answer word" not in out
    named = json.loads((eval_dir / "named.json").read_text())
    assert [r["p_fake"] for r in first] == [r["p_fake"] for r in named]
    metrics, = csv_rows(eval_dir / "metrics.csv")
    assert (metrics["fake_token"], metrics["real_token"]) == ("Fake", "Real") and int(metrics["samples"]) == 8


# --------------------------------------------------------------------------------------------- Task 3
@pytest.fixture(scope="module")
def task3_trained(root):
    printed = run("hybrid_train", "task3_config_hybrid_train.json", root, "epochs=1", "max_steps=1", *CUTS,
                  audit=True)
    return {"opened": list(_OPENED), "printed": printed}


def test_task3_training_writes_the_users_names(root, task3_trained):
    out = root / "task3_hybrid_lora" / "training"
    assert (out / "task3_lora" / "adapter_model.safetensors").is_file()
    assert (out / "task3_heads.safetensors").is_file() and (out / "task3_fusion.safetensors").is_file()
    assert not (out / "task3_heads.pt").exists() and len(csv_rows(out / "task3_training_metrics.csv")) == 1
    targets = adapter_targets(out / "task3_lora")
    lm = {f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in (24, 25, 26, 27) for p in "qv"}
    assert {t for t in targets if "language_model" in t} == lm, "lm.extra_modules are exactly the LM targets"
    vision = {f"model.visual.blocks.{b}.{m}" for b in (7, 15, 23, 31) for m in
              ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert {t for t in targets if "visual" in t} == vision, "no merge section: no merger LoRA, as before"
    assert not any(p.endswith("val_idx.json") for p in task3_trained["opened"])
    for pattern in ("visual.proj", "visual.attn"):
        assert f"vision LoRA pattern {pattern!r} matches no linear module" in task3_trained["printed"]


def test_task3_eval_config_names_a_missing_index_and_stops_before_loading(root, task3_trained):
    with pytest.raises(SystemExit) as stop:
        run("hybrid_eval", "task3_config_hybrid_eval.json", root, *CUTS)
    message = str(stop.value)
    assert message.startswith("config error")
    assert "ann_eval = '/root/autodl-tmp/data/testingset2/test_idx.json'" in message


def test_task3_eval_reads_what_training_wrote_by_the_users_names(root, task3_trained):
    err = run("hybrid_eval", "task3_config_hybrid_eval.json", root,
              f"ann_eval={root / 'data/testset2/annotation.json'}", *CUTS)
    assert "task3_heads.pt is read as safetensors" in err and "adapter_model.safetensors names a file" in err
    eval_dir = root / "task3_hybrid_lora" / "evaluation"
    metrics, = csv_rows(eval_dir / "task3_eval_metrics.csv")
    assert int(metrics["samples"]) == 8 and metrics["head_checkpoint"].endswith("task3_heads.safetensors")
    assert len(json.loads((eval_dir / "task3_inference_results.json").read_text())) == 8
