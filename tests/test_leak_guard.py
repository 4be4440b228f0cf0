"""The leak guard of every script that reads a validation index: on the user's real index each one
stops before any model loads with the known counts; allow_val_overlap runs and records them.

The real index (``../shared/data/forgerynet_index``) has no images and the model folders here are
empty: a script that went past the check would fail on those instead, with another message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qwen_forensics.data.leakage import VideoLeakageWarning
from qwen_forensics.data.lm_records import Task2Sample
from qwen_forensics.data.records import load_index
from qwen_forensics.evaluation.leak_guard import LeakGuardError, guard_checkpoint_split
from scripts import SHARED_INDEX, csv_rows, demo_index, needs_real_index, one_torch_thread, run_script

REPO = Path(__file__).resolve().parents[1]
KNOWN = ("video overlap: 1150 of 1500 records in", "come from 899 of 1227 video groups that also appear in")


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """The user's layout with the real train/val index, an empty model folder and hand-made checkpoint
    folders whose resolved_config.json records the real training index (or, for Task 2, the map.py
    records of it). Nothing here can be loaded as a model."""
    root = tmp_path_factory.mktemp("real_leak")
    data = root / "data" / "trainingset2"
    data.mkdir(parents=True)
    for name in ("train_idx.json", "val_idx.json"):
        shutil.copy(SHARED_INDEX / name, data / name)
    (root / "data" / "testset2").mkdir()
    shutil.copy(SHARED_INDEX / "val_idx.json", root / "data" / "testset2" / "annotation.json")
    (root / "Qwen2.5-VL-7B-Instruct").mkdir()
    train = str(data / "train_idx.json")
    for folder in ("t1_ckpt", "t3_ckpt"):
        (root / folder).mkdir()
        (root / folder / "resolved_config.json").write_text(json.dumps({"ann_train": train, "image_size": 448}))
    for name in ("heads.safetensors", "fusion.safetensors"):
        (root / "t3_ckpt" / name).write_bytes(b"")
    (root / "t3_ckpt" / "adapter").mkdir()
    mapped = root / "mapped.jsonl"
    with mapped.open("w") as f:
        for r in load_index(train):
            sample = Task2Sample(r.index, r.image_path, r.label, "Real or fake?", "Fake" if r.label else "Real",
                                 (720, 1280), 0, "0" * 64)
            f.write(json.dumps(sample.to_json()) + "\n")
    (root / "t2_adapter").mkdir()
    (root / "t2_adapter" / "resolved_config.json").write_text(json.dumps({"train_dataset_path": str(mapped)}))
    return root


def _cases(root: Path) -> dict[str, tuple[str, ...]]:
    val = root / "data" / "trainingset2" / "val_idx.json"
    t3 = root / "t3_ckpt"
    return {
        "lora_train": (f"ann_val={val}", f"out_dir={root / 'out_lora_train'}"),
        "hybrid_train": (f"ann_val={val}", f"output_dir={root / 'out_hybrid_train'}"),
        "lora_eval": (f"ckpt_path={root / 't1_ckpt'}", f"ann_val={val}", f"out_dir={root / 'out_lora_eval'}"),
        "full_model_eval": (f"lora_checkpoint={root / 't1_ckpt'}", f"val_annotation_file={val}",
                            f"out_dir={root / 'out_full_model_eval'}"),
        "lora_infer": (f"lora_path={root / 't2_adapter'}", f"val_annotation_file={val}",
                       f"out_dir={root / 'out_lora_infer'}"),
        "hybrid_eval": (f"lora_checkpoint={t3 / 'adapter'}", f"head_checkpoint={t3 / 'heads.safetensors'}",
                        f"fusion_checkpoint={t3 / 'fusion.safetensors'}", f"val_annotation_file={val}",
                        f"out_dir={root / 'out_hybrid_eval'}"),
    }


@needs_real_index
@pytest.mark.parametrize("script", ["lora_train", "hybrid_train", "lora_eval", "full_model_eval", "lora_infer",
                                    "hybrid_eval"])
def test_every_script_stops_on_the_real_leaking_split_before_loading(real_root, script):
    with pytest.raises(SystemExit) as stop:
        run_script(script, real_root, *_cases(real_root)[script])
    message = str(stop.value)
    assert isinstance(stop.value, LeakGuardError), message
    assert message.startswith("stopped before loading any model")
    for part in KNOWN:
        assert part in message, message
    assert "make_split.py" in message and "allow_val_overlap" in message
    # Nothing was written either: the check runs before the output folder is made.
    assert not (real_root / f"out_{script}").exists()


@needs_real_index
def test_allowed_overlap_on_the_real_index_warns_and_reports_the_counts(real_root):
    val = str(real_root / "data" / "trainingset2" / "val_idx.json")
    for folder in ("t1_ckpt", "t2_adapter"):
        with pytest.warns(VideoLeakageWarning, match="Running anyway because allow_val_overlap is set"):
            check = guard_checkpoint_split(val, real_root / folder, allow_overlap=True, val_key="ann_val")
        assert check.columns() == {"val_leak_check": "overlap allowed", "val_overlap_records": 1150,
                                   "val_overlap_groups": 899, "val_groups": 1227}


def test_checkpoint_without_a_recorded_or_present_training_set(tmp_path, capsys):
    val = tmp_path / "val.json"
    val.write_text("[]")
    (tmp_path / "hand_made").mkdir()
    check = guard_checkpoint_split(str(val), tmp_path / "hand_made", allow_overlap=False, val_key="ann_val")
    assert check.columns() == {"val_leak_check": f"not checked: no {tmp_path / 'hand_made/resolved_config.json'} "
                                                 "records the training set"}
    assert "its video overlap with the training set is not checked" in capsys.readouterr().out
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "resolved_config.json").write_text(json.dumps({"ann_train": str(tmp_path / "gone.json")}))
    with pytest.raises(LeakGuardError, match=r"trained on ann_train = .*gone\.json, which is not here.*Restore"):
        guard_checkpoint_split(str(val), tmp_path / "moved", allow_overlap=False, val_key="ann_val")
    allowed = guard_checkpoint_split(str(val), tmp_path / "moved", allow_overlap=True, val_key="ann_val")
    assert allowed.status == f"not checked: ann_train {tmp_path / 'gone.json'} is missing"
    assert guard_checkpoint_split(None, tmp_path / "moved", allow_overlap=False, val_key="ann_val").columns() == {}


# ------------------------------------------------------------------ tiny model: opt-in runs and records
@pytest.fixture(scope="module")
def leaking_val(tiny_root, tmp_path_factory) -> Path:
    """Half of the training index as a 'validation' index: every one of its records leaks."""
    records = json.loads(demo_index(tiny_root, "train").read_text())
    path = tmp_path_factory.mktemp("leaking") / "leaking_val.json"
    fakes = [r for r in records if r["label"] == 1][:3]
    reals = [r for r in records if r["label"] == 0][:3]
    path.write_text(json.dumps(fakes + reals))
    return path


def test_training_with_allowed_overlap_records_it_in_the_log(tiny_root, leaking_val, tmp_path):
    out = tmp_path / "train"
    sets = (f"out_dir={out}", "train_log=log.csv", "final_trained_heads=final", "max_steps=1", "epochs=1",
            "batch_size=8", "num_workers=0", "image_size=56", "visual_layers=[1]", "lora_target_layers=[1]",
            "fuse_dim=16", f"ann_val={leaking_val}")
    with one_torch_thread():
        with pytest.raises(LeakGuardError, match="6 of 6 records in .*leaking_val.json"):
            run_script("lora_train", tiny_root, *sets)
        assert not out.exists()
        with pytest.warns(VideoLeakageWarning):
            run_script("lora_train", tiny_root, *sets, "allow_val_overlap=true")
    row, = csv_rows(out / "log.csv")
    assert (row["val_leak_check"], row["val_overlap_records"], row["val_overlap_groups"]) == ("overlap allowed", "6",
                                                                                            "6")
    assert row["val_auroc"] != "", "the (leaked) validation still ran"


def test_evaluation_with_allowed_overlap_records_it_in_csv_and_report(tiny_root, task1_ckpt, leaking_val, tmp_path):
    out = tmp_path / "eval"
    sets = (f"ckpt_path={task1_ckpt}", f"ann_val={leaking_val}", f"out_dir={out}", f"csv_path={out / 'metrics.csv'}",
            "num_workers=0", "num_heatmaps=0")
    with one_torch_thread():
        with pytest.raises(LeakGuardError, match="6 of 6 records"):
            run_script("lora_eval", tiny_root, *sets)
        with pytest.warns(VideoLeakageWarning):
            printed = run_script("lora_eval", tiny_root, *sets, "allow_val_overlap=true")
    row = csv_rows(out / "metrics.csv")[-1]
    assert (row["val_leak_check"], row["val_overlap_records"], row["val_groups"]) == ("overlap allowed", "6", "6")
    assert "<td class=\"text\">val_overlap_records</td><td class=\"text\">6</td>" in (out / "report.html").read_text()
    assert "report:" in printed
