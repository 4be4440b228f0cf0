"""``qwen_forensics.checkpoints.runs``: a second run into one output folder moves the first run's files aside
(never mixes, never overwrites), appended CSV rows tell runs apart, a resume continues its own run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_forensics.checkpoints.runs import MANIFEST_NAME, PREVIOUS_DIR, config_hash, start_run
from scripts import csv_rows, demo_index, run_script

OUTPUTS = ["resolved_config.json", "epoch_*", "best_by_*", "final"]


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _quiet(_: str) -> None:
    pass


def test_a_new_run_moves_the_earlier_runs_files_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    first = start_run(out, "train.py", {"lr": 1}, OUTPUTS, say=_quiet)
    for name in ("epoch_0/heads.safetensors", "best_by_AUROC/heads.safetensors", "final/heads.safetensors"):
        _write(out / name, f"first {name}")
    _write(out / "train_log.csv", "epoch\n0\n")
    _write(out / "checkpoint_to_evaluate/heads.safetensors", "an input of the next run")
    _write(out / "notes.txt", "the user's own file")
    lines = []
    second = start_run(out, "train.py", {"lr": 2}, [*OUTPUTS, "checkpoint_*"], keep=[out / "train_log.csv",
                       out / "checkpoint_to_evaluate"], say=lines.append)

    dated, = (out / PREVIOUS_DIR).iterdir()
    earlier = json.loads((dated / MANIFEST_NAME).read_text())
    assert earlier["run_id"] == first.run_id and earlier["config"] == {"lr": 1}
    assert sorted(p.name for p in dated.iterdir()) == ["best_by_AUROC", "epoch_0", "final", MANIFEST_NAME]
    assert (dated / "final/heads.safetensors").read_text() == "first final/heads.safetensors"
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoint_to_evaluate", "notes.txt", PREVIOUS_DIR,
                                                            MANIFEST_NAME, "train_log.csv"])
    assert f"held run {first.run_id} (train.py, started" in lines[0] and str(dated) in lines[0]
    assert second.run_id != first.run_id and second.config_hash != first.config_hash
    assert json.loads((out / MANIFEST_NAME).read_text())["run_id"] == second.run_id


def test_a_folder_from_before_manifests_is_moved_by_the_new_runs_names(tmp_path):
    out = tmp_path / "out"
    for name in ("epoch_1/a", "epoch_7/a", "best_by_IoU/a", "resolved_config.json"):
        _write(out / name)
    lines = []
    start_run(out, "train.py", {}, OUTPUTS, say=lines.append)
    dated, = (out / PREVIOUS_DIR).iterdir()
    assert sorted(p.name for p in dated.iterdir()) == ["best_by_IoU", "epoch_1", "epoch_7", "resolved_config.json"]
    assert "held an earlier run (no run manifest)" in lines[0]


def test_an_output_outside_the_folder_moves_only_when_this_run_writes_it(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere" / "predictions.json"
    start_run(out, "eval.py", {}, ["report.html", elsewhere], say=_quiet)
    _write(elsewhere, "first")
    start_run(out, "eval.py", {}, ["report.html"], say=_quiet)
    assert elsewhere.read_text() == "first", "the earlier run's file elsewhere is not this run's to move"
    start_run(out, "eval.py", {}, ["report.html", elsewhere], say=_quiet)
    moved, = (elsewhere.parent / PREVIOUS_DIR).glob("*/predictions.json")
    assert moved.read_text() == "first" and not elsewhere.exists()


def test_two_runs_in_one_second_get_two_dated_folders(tmp_path):
    out = tmp_path / "out"
    for k in range(3):
        start_run(out, "eval.py", {}, ["report.html"], say=_quiet)
        _write(out / "report.html", str(k))
    dated = sorted((out / PREVIOUS_DIR).iterdir())
    assert sorted((d / "report.html").read_text() for d in dated) == ["0", "1"]


def test_resume_keeps_the_run_and_refuses_other_settings(tmp_path):
    out = tmp_path / "out"
    may_change = ("epochs", "resume")
    first = start_run(out, "train.py", {"lr": 1, "epochs": 2, "resume": None}, OUTPUTS, may_change=may_change,
                      say=_quiet)
    _write(out / "epoch_0/a")
    again = start_run(out, "train.py", {"lr": 1, "epochs": 4, "resume": str(out / "epoch_0")}, OUTPUTS,
                      resume=True, may_change=may_change, say=_quiet)
    assert (again.run_id, again.config_hash) == (first.run_id, first.config_hash)
    assert (out / "epoch_0/a").is_file() and not (out / PREVIOUS_DIR).exists()
    assert len(json.loads((out / MANIFEST_NAME).read_text())["resumed"]) == 1
    with pytest.raises(SystemExit, match=r"config differs in \['lr'\] \(lr: 1 -> 3\)\. A resume may change only "
                                         r"\['epochs', 'resume'\]"):
        start_run(out, "train.py", {"lr": 3, "epochs": 4, "resume": "x"}, OUTPUTS, resume=True,
                  may_change=may_change, say=_quiet)


def test_config_hash_ignores_only_the_keys_a_resume_may_change():
    base = {"lr": 1, "training_args": {"max_steps": 5, "seed": 1}}
    assert config_hash(base, ["training_args.max_steps"]) == config_hash(
        {"lr": 1, "training_args": {"max_steps": 9, "seed": 1}}, ["training_args.max_steps"])
    assert config_hash(base, ["training_args.max_steps"]) != config_hash(
        {"lr": 1, "training_args": {"max_steps": 5, "seed": 2}}, ["training_args.max_steps"])


# ---------------------------------------------------------------- the case, with the real scripts
pytestmark = pytest.mark.usefixtures("single_thread")


def _train(tiny_root: Path, out: Path, *extra: str) -> str:
    return run_script("lora_train", tiny_root, f"out_dir={out}", "train_log=train_log.csv", "final_trained_heads=final",
                      "max_steps=1",
                      "epochs=1", "num_workers=0", "visual_layers=[1]", "lora_target_layers=[1]", "fuse_dim=32",
                      f"ann_val={demo_index(tiny_root, 'val')}", "allow_val_overlap=true", *extra)


def test_second_training_into_one_folder_keeps_the_first_intact_and_rows_apart(tiny_root, tmp_path):
    """Train, then train again with other settings into the same out_dir (the seed's fixed paths make
    everyone do this): the first run's checkpoints are found intact in previous_runs/<start>/, the folder
    holds only the second run, and the appended training log tells the two rows apart."""
    out = tmp_path / "t1"
    _train(tiny_root, out, "image_size=112", "batch_size=8")
    first_files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()
                   and p.name != "train_log.csv"}
    assert {Path("best_by_AUROC/heads.safetensors"), Path("final/heads.safetensors")} <= set(first_files)
    printed = _train(tiny_root, out, "image_size=56", "batch_size=4")

    dated, = (out / PREVIOUS_DIR).iterdir()
    assert f"moved to {dated}" in printed
    for rel, data in first_files.items():
        assert (dated / rel).read_bytes() == data, rel
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best_by_AUROC", "best_by_IoU", "epoch_0", "final", PREVIOUS_DIR, MANIFEST_NAME, "resolved_config.json",
         "train_log.csv", "training.html"])
    assert json.loads((out / "final/resolved_config.json").read_text())["image_size"] == 56
    first, second = csv_rows(out / "train_log.csv")
    assert first["run_id"] != second["run_id"] and first["config_hash"] != second["config_hash"]
    assert json.loads((dated / MANIFEST_NAME).read_text())["run_id"] == first["run_id"]
    assert json.loads((out / MANIFEST_NAME).read_text())["run_id"] == second["run_id"]

    # A resume continues the second run: same run id, and the first run stays where it is.
    _train(tiny_root, out, "image_size=56", "batch_size=4", "epochs=2", "max_steps=2",
           f"resume={out / 'epoch_0'}")
    rows = csv_rows(out / "train_log.csv")
    assert [r["run_id"] for r in rows] == [first["run_id"], second["run_id"], second["run_id"]]
    assert rows[2]["config_hash"] == second["config_hash"] and len(list((out / PREVIOUS_DIR).iterdir())) == 1
    with pytest.raises(SystemExit, match=r"differs in \['batch_size'\]"):
        _train(tiny_root, out, "image_size=56", "batch_size=8", "epochs=3", "max_steps=3",
               f"resume={out / 'epoch_1'}")
