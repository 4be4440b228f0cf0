"""The user's own config files (``tests/data/seed_configs``, copies of ``../shared/seed/configs``) run
through the real scripts the way the user runs them: every ``/root/autodl-tmp`` in the file edited to
another folder (as a user whose data lives elsewhere does), no ``--root``, from an unrelated working
directory. Only epochs, steps and loader workers are cut, in the JSON file. The root holds the tiny
model (28 LM layers, as in the 7B, because the Task 3 file names LM layers 24-27) and the demo data.

Each next step consumes what the previous one wrote, by the names in the user's files. Where the
user's files name different paths for one link (they come from different versions of the earlier
scripts), the unedited run must stop before any model loads, naming the key and the path; the test
then edits that one key as the user would.

Every run is audited: it must find its data, and every file it writes (opened for writing, created,
renamed, moved) must lie in the one output folder its config names, never under ``/root/autodl-tmp``
and never in the working directory.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import matplotlib
import pytest

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from scripts import csv_rows, load_script, run_script

REPO = Path(__file__).resolve().parents[1]
SEED = Path(__file__).resolve().parent / "data" / "seed_configs"
SHARED_SEED = REPO.parent / "shared" / "seed" / "configs"
USER_ROOT = "/root/autodl-tmp"
MODEL = "Qwen2.5-VL-7B-Instruct"
CUTS = {"num_workers": 0}

_WRITTEN: list[str] = []
_AUDITING = [False]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args) -> None:
    """Record every path a running script writes (sys.addaudithook cannot be removed; it records only
    while the flag is set)."""
    if not _AUDITING[0]:
        return
    if event == "open" and isinstance(args[0], (str, Path)):
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (mode is None and flags & _WRITE_FLAGS):
            _WRITTEN.append(os.path.abspath(args[0]))
    elif event in ("os.mkdir", "os.rename", "os.replace", "os.symlink", "os.link", "shutil.copyfile",
                   "shutil.move", "shutil.copytree"):
        _WRITTEN.extend(os.path.abspath(a) for a in args[:2] if isinstance(a, (str, Path)))


sys.addaudithook(_audit)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The user's own root (not /root/autodl-tmp): model, data, and later every output."""
    root = tmp_path_factory.mktemp("my_root")
    build_tiny_model(root / MODEL, text_layers=28)
    make_demo_dataset(root, n_train=16, n_test=8, frames_per_video=2)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An unrelated working directory: nothing may be written into it."""
    return tmp_path_factory.mktemp("cwd")


def user_config(root: Path, name: str, **edits) -> Path:
    """The user's file with /root/autodl-tmp edited to ``root`` and ``edits`` applied (``a__b`` is ``a.b``)."""
    data = json.loads((SEED / name).read_text(encoding="utf-8").replace(USER_ROOT, str(root)))
    for key, value in edits.items():
        *parents, last = key.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    path = root / "my_configs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def run(script: str, config: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    """The script's ``main(["--config", FILE])`` from ``workdir``; returns what it printed and the paths it wrote."""
    # matplotlib makes its own config and cache folders (~/.config, ~/.cache) when first asked for them, in
    # whichever test runs first: not the run's outputs, so they are made before the audit starts.
    matplotlib.get_configdir(), matplotlib.get_cachedir()
    module = load_script(script)
    monkeypatch.chdir(workdir)
    _WRITTEN.clear()
    _AUDITING[0] = True
    try:
        printed = run_script(script, None, argv=["--config", str(config)], module=module)
    finally:
        _AUDITING[0] = False
    written = [p for p in _WRITTEN if "__pycache__" not in p]
    return printed, written


def assert_only_in(folder: Path, written: list[str], workdir: Path) -> None:
    """Everything written lies in ``folder`` (creating ``folder`` creates its missing parents too)."""
    assert written, "the run wrote nothing"
    outside = sorted({p for p in written if not Path(p).is_relative_to(folder) and not folder.is_relative_to(p)})
    assert not outside, f"written outside {folder}: {outside}"
    assert not any(p.startswith(USER_ROOT) for p in written)
    assert not any(workdir.iterdir()), f"the working directory got {list(workdir.iterdir())}"


def adapter_targets(adapter_dir: Path) -> set[str]:
    """The module names an adapter wraps (its config holds them as one exact-match regex)."""
    pattern = json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"]
    return {re.sub(r"\\(.)", r"\1", name) for name in pattern.removeprefix("(?:").removesuffix(")").split("|")}


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
def task1_trained(root, workdir):
    config = user_config(root, "task1_config_lora.json", epochs=1, max_steps=2, **CUTS)
    with pytest.MonkeyPatch.context() as mp:
        printed, written = run("lora_train", config, workdir, mp)
    return {"printed": printed, "written": written}


def test_task1_training_writes_the_users_names_into_its_out_dir_only(root, workdir, task1_trained):
    out = root / "outputs_lora_joint"
    assert_only_in(out, task1_trained["written"], workdir)
    assert f"[output] outputs of this run: {out} (out_dir)" in task1_trained["printed"]
    ckpt = out / "final_trained_heads_2_all"
    assert (ckpt / "heads.safetensors").is_file() and (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "final_trained_heads_2_all.pt").exists()
    log, = csv_rows(out / "train_log_lora_joint.csv")
    assert log["run_id"] and len(log["config_hash"]) == 12
    assert {f"blocks.{b}.attn.qkv" for b in range(32)} <= adapter_targets(ckpt / "adapter"), "lora_target_layers 0..31"
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["ann_val"] is None and resolved["config_sources"]["ann_val"] == "off (not in the config)"
    assert "final_trained_heads_2_all.pt is written as the checkpoint folder" in task1_trained["printed"]


def test_task1_eval_configs_name_another_checkpoint_and_stop_before_loading(root, workdir, task1_trained,
                                                                            monkeypatch):
    for script, name, key in (("lora_eval", "task1_subtask_vit_head_eval_config_eval.json", "ckpt_path"),
                              ("full_model_eval", "task1_subtask_full_model_eval_config_full_model_eval.json",
                               "lora_checkpoint")):
        with pytest.raises(SystemExit) as stop:
            run(script, user_config(root, name, **CUTS), workdir, monkeypatch)
        message = str(stop.value)
        assert message.startswith("config error") and f"{key} = '{root}/task1_modular_lora/training/" \
                                                      "modular_vit_lora.pt'" in message
        assert not (root / "task1_modular_lora").exists(), "nothing was written before the stop"


def test_task1_head_eval_reads_the_trained_pt_name(root, workdir, task1_trained, monkeypatch):
    ckpt = root / "outputs_lora_joint" / "final_trained_heads_2_all.pt"
    config = user_config(root, "task1_subtask_vit_head_eval_config_eval.json", ckpt_path=str(ckpt), **CUTS)
    printed, written = run("lora_eval", config, workdir, monkeypatch)
    eval_dir = root / "task1_modular_lora" / "subtask_vit_head_eval"
    assert_only_in(eval_dir, written, workdir)
    assert "config lora_r=16 but the checkpoint" in printed and "lora_target_layers=[7, 15, 23, 31]" in printed
    rows = json.loads((eval_dir / "inference_results.json").read_text())
    assert len(rows) == 8 and {"p_fake", "pixel_iou"} <= set(next(r for r in rows if r["label"] == 1))
    metrics, = csv_rows(eval_dir / "metrics.csv")
    assert metrics["ckpt_path"] == str(ckpt.with_suffix("")) and float(metrics["samples"]) == 8
    assert (eval_dir / "report.html").is_file() and metrics["run_id"]


def test_task1_head_eval_stopped_by_a_bad_index_leaves_the_earlier_run_in_place(root, workdir, task1_trained,
                                                                              monkeypatch):
    """The user's eval config, run once, then again with ann_test naming an index with one missing image: the
    second run stops before anything loads and the first run's files are all where they were, unchanged."""
    ckpt = root / "outputs_lora_joint" / "final_trained_heads_2_all.pt"
    run("lora_eval", user_config(root, "task1_subtask_vit_head_eval_config_eval.json", ckpt_path=str(ckpt), **CUTS),
        workdir, monkeypatch)
    eval_dir = root / "task1_modular_lora" / "subtask_vit_head_eval"
    before = {p: p.read_bytes() for p in sorted(eval_dir.rglob("*")) if p.is_file()}
    bad = root / "my_configs" / "test_with_a_missing_image.json"
    test = json.loads((root / "data" / "testset2" / "annotation.json").read_text())
    bad.write_text(json.dumps([*test, {"image_path": "testset2/image/missing.jpg", "mask_path": "720x1280",
                                       "label": 0}]))
    config = user_config(root, "task1_subtask_vit_head_eval_config_eval.json", ckpt_path=str(ckpt),
                         ann_test=str(bad), **CUTS)
    with pytest.raises(SystemExit) as stop:
        run("lora_eval", config, workdir, monkeypatch)
    assert "stopped: 1 problem(s) in 1 record(s)" in str(stop.value) and "missing.jpg" in str(stop.value)
    assert {p: p.read_bytes() for p in sorted(eval_dir.rglob("*")) if p.is_file()} == before


def test_task1_full_model_eval_writes_everything_next_to_its_csv(root, workdir, task1_trained, monkeypatch):
    """The config names csv_path (absolute) and no out_dir: predictions, report and every other output
    go to the CSV's folder, never to the default under /root/autodl-tmp."""
    ckpt = root / "outputs_lora_joint" / "final_trained_heads_2_all.pt"
    config = user_config(root, "task1_subtask_full_model_eval_config_full_model_eval.json",
                         lora_checkpoint=str(ckpt), **CUTS)
    printed, written = run("full_model_eval", config, workdir, monkeypatch)
    eval_dir = root / "task1_modular_lora" / "subtask_full_model_eval"
    assert_only_in(eval_dir, written, workdir)
    assert f"outputs of this run: {eval_dir} (the folder of csv_path; the config names no out_dir)" in printed
    assert "answer word ' Fake' has surrounding whitespace" in printed
    metrics, = csv_rows(eval_dir / "metrics.csv")
    assert (metrics["fake_token"], metrics["real_token"]) == ("Fake", "Real")
    assert "generated_acc" in metrics, "max_new_tokens 4 adds the generated-text columns"
    assert len(json.loads((eval_dir / "predictions.json").read_text())) == 8
    assert {p.name for p in eval_dir.iterdir()} == {"metrics.csv", "predictions.json", "report.html",
                                                    "resolved_config.json", "run_manifest.json"}


# --------------------------------------------------------------------------------------------- Task 2
@pytest.fixture(scope="module")
def task2_mapped(root, workdir):
    with pytest.MonkeyPatch.context() as mp:
        printed, written = run("map", user_config(root, "task2_config_map.json"), workdir, mp)
    return {"printed": printed, "written": written}


@pytest.fixture(scope="module")
def task2_adapter(root, workdir, task2_mapped):
    mapped = root / "task2_lm_lora" / "datasets" / "train_dataset_mapped"
    with pytest.MonkeyPatch.context() as mp:
        with pytest.raises(SystemExit) as stop:
            run("LORA", user_config(root, "task2_config_lora_trainer.json"), workdir, mp)
        config = user_config(root, "task2_config_lora_trainer.json", train_dataset_path=str(mapped),
                             training_args__max_steps=2, training_args__gradient_accumulation_steps=2)
        printed, written = run("LORA", config, workdir, mp)
    return {"stop": str(stop.value), "printed": printed, "written": written}


def test_task2_map_converts_both_datasets_of_the_list(root, workdir, task2_mapped):
    datasets = root / "task2_lm_lora" / "datasets"
    assert_only_in(datasets, task2_mapped["written"], workdir)
    for name, count in (("train", 16), ("test", 8)):
        lines = (datasets / f"{name}_dataset_mapped" / "records.jsonl").read_text().splitlines()
        assert len(lines) == count
        record = json.loads(lines[0])
        question = record["messages"][0]["content"][1]["text"]
        assert question == "Please determine whether this image is Real or Fake. Answer only with Fake or Real."
        assert record["messages"][1]["content"][0]["text"] == ("Fake" if record["label"] else "Real")
        assert (datasets / f"{name}_batches" / "map_manifest.json").is_file()
        source = json.loads((datasets / f"{name}_dataset_mapped" / "records.source.json").read_text())
        assert source["data_root"] == str(root / "data")


def test_task2_trainer_names_another_dataset_and_stops_before_loading(root, task2_adapter):
    stop = task2_adapter["stop"]
    assert stop.startswith("config error")
    assert f"train_dataset_path = '{root}/qwen2.5-vl-lora/Qwen_code/datasets/train_dataset_mapped'" in stop


def test_task2_training_reads_the_images_where_map_found_them(root, workdir, task2_adapter):
    """The trainer config names no data_root: the images come from the data root map.py recorded."""
    training = root / "task2_lm_lora" / "training"
    assert_only_in(training, task2_adapter["written"], workdir)
    mapped = root / "task2_lm_lora" / "datasets" / "train_dataset_mapped" / "records.jsonl"
    assert f"{mapped}: images are read from the data root map.py recorded, {root / 'data'}" in task2_adapter["printed"]
    adapter = training / "lora_adapter"
    saved = json.loads((adapter / "resolved_config.json").read_text())
    assert (saved["fake_token"], saved["real_token"]) == ("Fake", "Real")
    assert saved["training_args"]["fp16"] is False, "fp16 on a CPU run is switched off"
    assert saved["training_args"]["output_dir"] == str(training / "hf_trainer")
    targets = adapter_targets(adapter)
    assert {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2", "model.visual.blocks.7.attn.qkv"} <= targets


def test_task2_test_dataset_object_is_evaluated_during_training(root, workdir, task2_adapter, tmp_path, monkeypatch):
    """The earlier LORA.py's ``test_dataset`` object (an index) is an evaluation set during training."""
    mapped = root / "task2_lm_lora" / "datasets" / "train_dataset_mapped"
    spec = {"annotation_file": str(root / "data/testset2/annotation.json"), "dataset_limit": 6}
    config = user_config(root, "task2_config_lora_trainer.json", train_dataset_path=str(mapped), test_dataset=spec,
                         training_args__num_train_epochs=1, training_args__gradient_accumulation_steps=8,
                         training_args__per_device_eval_batch_size=3, training_args__output_dir=str(tmp_path / "hf"),
                         save_lora_path=str(tmp_path / "adapter"))
    printed, _ = run("LORA", config, workdir, monkeypatch)
    assert "evaluating (eval_loss) after every epoch" in printed
    assert re.search(r"'eval_loss': '?[0-9.]+", printed), "the Trainer evaluated the test set"


def test_task2_infer_reads_the_trained_answer_token_not_the_configured_one(root, workdir, task2_adapter,
                                                                            monkeypatch):
    """The user's infer config asks for " Fake" / " Real"; the adapter was trained on "Fake" / "Real".
    The trained tokens are read, with a note naming both, and the scores equal a run that names them."""
    printed, written = run("lora_infer", user_config(root, "task2_config_lora_infer.json", **CUTS), workdir,
                           monkeypatch)
    eval_dir = root / "task2_lm_lora" / "evaluation"
    assert_only_in(eval_dir, written, workdir)
    assert "fake_token=' Fake' is not the answer word the adapter was trained with ('Fake')" in printed
    assert "real_token=' Real' is not the answer word the adapter was trained with ('Real')" in printed
    first = json.loads((eval_dir / "predictions.json").read_text())
    config = user_config(root, "task2_config_lora_infer.json", fake_token="Fake", real_token="Real",
                         output_json="named.json", **CUTS)
    printed, _ = run("lora_infer", config, workdir, monkeypatch)
    assert "not the answer word" not in printed
    named = json.loads((eval_dir / "named.json").read_text())
    assert [r["p_fake"] for r in first] == [r["p_fake"] for r in named]
    rows = csv_rows(eval_dir / "metrics.csv")
    assert [(r["fake_token"], r["real_token"], int(r["samples"])) for r in rows] == [("Fake", "Real", 8)] * 2
    assert rows[0]["run_id"] != rows[1]["run_id"], "two runs appended to one CSV are told apart"
    assert rows[0]["config_hash"] != rows[1]["config_hash"]
    earlier, = (eval_dir / "previous_runs").iterdir()
    assert json.loads((earlier / "predictions.json").read_text()) == first, "the first run's files are kept"


# --------------------------------------------------------------------------------------------- Task 3
@pytest.fixture(scope="module")
def task3_trained(root, workdir):
    config = user_config(root, "task3_config_hybrid_train.json", epochs=1, max_steps=1, **CUTS)
    with pytest.MonkeyPatch.context() as mp:
        printed, written = run("hybrid_train", config, workdir, mp)
    return {"printed": printed, "written": written}


def test_task3_training_writes_the_users_names(root, workdir, task3_trained):
    out = root / "task3_hybrid_lora" / "training"
    assert_only_in(out, task3_trained["written"], workdir)
    assert (out / "task3_lora" / "adapter_model.safetensors").is_file()
    assert (out / "task3_heads.safetensors").is_file() and (out / "task3_fusion.safetensors").is_file()
    assert not (out / "task3_heads.pt").exists() and len(csv_rows(out / "task3_training_metrics.csv")) == 1
    targets = adapter_targets(out / "task3_lora")
    lm = {f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in (24, 25, 26, 27) for p in "qv"}
    assert {t for t in targets if "language_model" in t} == lm, "lm.extra_modules are exactly the LM targets"
    vision = {f"model.visual.blocks.{b}.{m}" for b in (7, 15, 23, 31) for m in
              ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert {t for t in targets if "visual" in t} == vision, "no merge section: no merger LoRA, as before"
    for pattern in ("visual.proj", "visual.attn"):
        assert f"vision LoRA pattern {pattern!r} matches no linear module" in task3_trained["printed"]


def test_task3_eval_config_names_a_missing_index_and_stops_before_loading(root, workdir, task3_trained,
                                                                         monkeypatch):
    with pytest.raises(SystemExit) as stop:
        run("hybrid_eval", user_config(root, "task3_config_hybrid_eval.json", **CUTS), workdir, monkeypatch)
    message = str(stop.value)
    assert message.startswith("config error")
    assert f"ann_eval = '{root}/data/testingset2/test_idx.json'" in message


def test_task3_eval_reads_what_training_wrote_and_writes_under_the_users_root(root, workdir, task3_trained,
                                                                             monkeypatch):
    """The config names no output location (its CSV and predictions are bare names): the default folder
    goes under the root the config's own paths imply, not under /root/autodl-tmp."""
    config = user_config(root, "task3_config_hybrid_eval.json", ann_eval=str(root / "data/testset2/annotation.json"),
                         **CUTS)
    printed, written = run("hybrid_eval", config, workdir, monkeypatch)
    eval_dir = root / "task3_hybrid_lora" / "evaluation"
    assert_only_in(eval_dir, written, workdir)
    assert f"{eval_dir} (out_dir not in the config: its default under {root}, the root the config's paths imply)" \
        in printed
    assert "task3_heads.pt is read as safetensors" in printed and "adapter_model.safetensors names a file" in printed
    metrics, = csv_rows(eval_dir / "task3_eval_metrics.csv")
    assert int(metrics["samples"]) == 8 and metrics["head_checkpoint"].endswith("task3_heads.safetensors")
    assert len(json.loads((eval_dir / "task3_inference_results.json").read_text())) == 8
