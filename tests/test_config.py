import json
import re
from dataclasses import replace

import pytest

from qwen_forensics.checkpoints.tensors import write_resolved_config
from qwen_forensics.config.loading import ROOT_ENV_VAR, ConfigError, load_config, parse_config, read_config_file
from qwen_forensics.model import loader
from qwen_forensics.checkpoints.runs import config_values
from qwen_forensics.task_configs import (SHIPPED_CONFIGS, Task1FullModelEvalConfig, Task1HeadEvalConfig,
                                         Task1TrainConfig, Task2InferConfig, Task2MapConfig, Task3EvalConfig,
                                         Task3TrainConfig)
from scripts import CODE, load_script, run_script


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key != "training_args":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("rel", sorted(SHIPPED_CONFIGS))
def test_shipped_configs_state_only_what_differs_from_the_defaults(rel, monkeypatch):
    """One home for defaults: the dataclass. A shipped file states only the keys whose value differs from
    it (a stated default is drift waiting to happen); the file parses, and its paths stay the user's."""
    monkeypatch.delenv(ROOT_ENV_VAR, raising=False)
    path = CODE / rel
    cls = SHIPPED_CONFIGS[rel]
    data = read_config_file(path)
    cfg = config_values(parse_config(cls, data, base_dir=path.parent))
    required = {"annotation_file": data["annotation_file"]} if cls is Task2MapConfig else {}
    default = config_values(parse_config(cls, required, base_dir=path.parent))
    stated, parsed, defaults = _flat(data), _flat(cfg), _flat(default)
    assert stated, "an empty shipped file: the script's defaults need no file"
    same = sorted(k for k in stated if k not in required and parsed[k] == defaults[k])
    assert not same, f"{rel} states default values {same}; drop them (the dataclass is where defaults live)"
    for key, value in stated.items():
        if isinstance(value, str) and value.startswith("/root/autodl-tmp"):
            assert parsed[key] == value


def test_every_config_checks_its_values():
    """Training and evaluation configs alike refuse values that cannot work, naming the key."""
    for cls, bad, fragment in ((Task1HeadEvalConfig, {"pixel_threshold": 1.5}, "pixel_threshold=1.5"),
                               (Task1HeadEvalConfig, {"batch_size": 0}, "batch_size=0"),
                               (Task1HeadEvalConfig, {"num_heatmaps": -1}, "num_heatmaps=-1"),
                               (Task1FullModelEvalConfig, {"max_new_tokens": -2}, "max_new_tokens=-2"),
                               (Task1FullModelEvalConfig, {"batch_size": -1}, "batch_size=-1"),
                               (Task1FullModelEvalConfig, {"image_size": 0}, "image_size=0"),
                               (Task3EvalConfig, {"pixel_threshold": -0.1}, "pixel_threshold=-0.1"),
                               (Task3EvalConfig, {"batch_size": 0}, "batch_size=0"),
                               (Task3EvalConfig, {"num_workers": -1}, "num_workers=-1"),
                               (Task2InferConfig, {"num_workers": -3}, "num_workers=-3"),
                               (Task1TrainConfig, {"num_workers": -1}, "num_workers=-1")):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            parse_config(cls, bad)


def test_unknown_key_suggests_the_close_one_or_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_config(Task1TrainConfig, {"lr_heads": 1e-3})
    assert "lr_heads: unknown key; did you mean 'lr_head'?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(Task1TrainConfig, {"zzz": 1})
    lines = str(err.value).splitlines()
    assert "zzz: unknown key. Valid keys:" in lines[1] and "lora_target_layers" in str(err.value)
    assert max(len(line) for line in lines) <= 110, "the key list is wrapped"


def test_three_mistakes_are_reported_in_one_run(tmp_path, monkeypatch):
    """A typo'd key, a missing path and a wrong type: one error lists all three, each with its source."""
    monkeypatch.delenv("QWEN_FORENSICS_ROOT", raising=False)
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    cfg_file = tmp_path / "mine.json"
    cfg_file.write_text(json.dumps({"model_path": str(tmp_path / "model"), "data_root": str(tmp_path / "data"),
                                    "ann_train": str(tmp_path / "data" / "train_idx.json"), "lr_haed": 0.001,
                                    "epochs": "3"}))
    with pytest.raises(SystemExit) as stop:
        load_config(Task1TrainConfig, description="t", argv=["--config", str(cfg_file), "--set", "batch_size=0"])
    message = str(stop.value)
    assert message.startswith(f"config error (config file {cfg_file}): 4 problems:")
    assert f"lr_haed: unknown key; did you mean 'lr_head'?  (from {cfg_file})" in message
    assert f"epochs: expected an integer, got '3'  (from {cfg_file})" in message
    assert f"ann_train = '{tmp_path}/data/train_idx.json': {tmp_path}/data/train_idx.json does not exist" in message
    assert "batch_size=0: must be > 0  (from --set batch_size=...)" in message


def test_missing_path_under_the_default_root_hints_root_and_names_root_when_given(tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_FORENSICS_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"data_root = '/root/autodl-tmp/data'.*pass --root DIR"):
        parse_config(Task1TrainConfig, {}, check_inputs=True)
    with pytest.raises(ConfigError, match=rf"(?s)3 problems.*from --root {tmp_path}, which moved "
                                          rf"/root/autodl-tmp/data to {tmp_path}/data"):
        parse_config(Task1TrainConfig, {}, root=str(tmp_path), check_inputs=True)


def test_unknown_nested_key_fails():
    with pytest.raises(ConfigError, match="visual.*blocks"):
        parse_config(Task3TrainConfig, {"lora": {"visual": {"block": [1]}}})


def test_working_dir_is_ignored(capsys):
    cfg = parse_config(Task1TrainConfig, {"working_dir": "/root/autodl-tmp", "epochs": 2})
    assert cfg.epochs == 2
    assert "working_dir" in capsys.readouterr().err


def test_type_errors_are_reported():
    with pytest.raises(ConfigError, match="epochs"):
        parse_config(Task1TrainConfig, {"epochs": "3"})
    with pytest.raises(ConfigError, match="image_size=0: must be positive"):
        parse_config(Task1TrainConfig, {"image_size": 0})
    with pytest.raises(ConfigError, match="amp_dtype"):
        parse_config(Task1TrainConfig, {"amp_dtype": "bfloat"})


def test_configs_check_themselves_when_built_in_python():
    with pytest.raises(ConfigError, match="epochs=0: must be > 0"):
        Task1TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="fusion_tokens"):
        Task3TrainConfig(fusion_tokens=-1)
    with pytest.raises(ConfigError, match="map_batch_size"):
        replace(parse_config(Task2MapConfig, {"annotation_file": "train.json"}), map_batch_size=0)


@pytest.mark.parametrize("script, fixture", [("lora_train", None), ("LORA", "task2_adapter"), ("hybrid_train", None),
                                             ("lora_eval", "task1_ckpt")])
def test_image_size_off_the_patch_grid_stops_before_weights_load(script, fixture, tiny_root, request, monkeypatch):
    """The factor (patch 14 x merge 2 = 28) comes from the model folder's image processor, not from the code."""
    if fixture:
        request.getfixturevalue(fixture)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before image_size was checked")

    monkeypatch.setattr(loader, "load_model", no_weights)
    monkeypatch.setattr(loader, "load_vision_tower", no_weights)
    sets = ["image_size=450"] + ([f"ckpt_path={tiny_root / 't1_train/final'}"] if script == "lora_eval" else [])
    with pytest.raises(ValueError, match=r"image_size=450 must be a multiple of 28 .*preprocessor_config.json"):
        run_script(script, tiny_root, *sets)


def test_set_overrides_nested_and_flat(tmp_path, user_root):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"epochs": 1}))
    cfg = load_config(Task3TrainConfig, description="t", argv=[
        "--config", str(cfg_file), "--root", str(user_root), "--set", "lora.visual.blocks=[1,3]", "--set", "loss_weights.lm=0.5",
        "--set", "lora.lm.enabled=false", "--set", "prompt=Real or fake?", "--set", "epochs=4"])
    assert cfg.lora.visual.blocks == [1, 3]
    assert cfg.loss_weights.lm == 0.5
    assert cfg.lora.lm.enabled is False
    assert cfg.prompt == "Real or fake?"
    assert cfg.epochs == 4


def test_root_override_flag_and_env(tmp_path, monkeypatch, user_layout):
    cfg_file = CODE / "task1_modular_lora/config_lora.json"
    user_layout(tmp_path)
    cfg = load_config(Task1TrainConfig, description="t", argv=["--config", str(cfg_file), "--root", str(tmp_path)])
    assert cfg.model_path == str(tmp_path / "Qwen2.5-VL-7B-Instruct")
    assert cfg.ann_train == str(tmp_path / "data/trainingset2/train_idx.json")
    user_layout(tmp_path / "env")
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path / "env"))
    cfg = load_config(Task1TrainConfig, description="t", argv=["--config", str(cfg_file)])
    assert cfg.out_dir == str(tmp_path / "env/task1_modular_lora/training")
    assert not any(str(v).startswith("/root/autodl-tmp") for v in vars(cfg).values())


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch, user_root):
    monkeypatch.delenv(ROOT_ENV_VAR, raising=False)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    cfg_file = tmp_path / "cfg" / "c.json"
    cfg_file.write_text(json.dumps({"data_root": "../data", "model_path": str(user_root / "Qwen2.5-VL-7B-Instruct"),
                                    "ann_train": str(user_root / "data/trainingset2/train_idx.json")}))
    monkeypatch.chdir("/")
    cfg = load_config(Task1TrainConfig, description="t", argv=["--config", str(cfg_file)])
    assert cfg.data_root == str(tmp_path / "data")


def test_bad_config_exits_with_file_name(tmp_path):
    cfg_file = tmp_path / "bad.json"
    cfg_file.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json"):
        load_config(Task1TrainConfig, description="t", argv=["--config", str(cfg_file)])


def test_resolved_config_round_trip(tmp_path):
    cfg = parse_config(Task3TrainConfig, {"fusion_tokens": 2})
    path = write_resolved_config(tmp_path, cfg)
    again = parse_config(Task3TrainConfig, json.loads(path.read_text()))
    assert again == cfg


def test_workers_are_capped_to_the_usable_cores_with_one_note(monkeypatch):
    from qwen_forensics.config import loading
    from qwen_forensics.task_configs import Task2TrainConfig
    monkeypatch.setattr(loading, "usable_cores", lambda: 2)
    cfg = parse_config(Task1TrainConfig, {"num_workers": 8})
    loading.cap_workers(cfg)
    assert cfg.num_workers == 2
    assert [n for n in loading.config_meta(cfg).notes if "lowered" in n] == [
        "num_workers 8 lowered to 2: this machine gives the run 2 CPU cores"]
    trainer = parse_config(Task2TrainConfig, {"training_args": {"output_dir": "hf", "dataloader_num_workers": 8}})
    loading.cap_workers(trainer)
    assert trainer.training_args["dataloader_num_workers"] == 2
    assert [n for n in loading.config_meta(trainer).notes if "lowered" in n] == [
        "training_args.dataloader_num_workers 8 lowered to 2: this machine gives the run 2 CPU cores"]
    few = parse_config(Task1TrainConfig, {"num_workers": 1})
    loading.cap_workers(few)
    assert few.num_workers == 1 and not [n for n in loading.config_meta(few).notes if "lowered" in n]


def test_an_explicit_worker_count_above_the_cores_is_lowered_with_a_note(monkeypatch, tmp_path, capsys):
    from qwen_forensics.config import loading
    monkeypatch.setattr(loading, "usable_cores", lambda: 2)
    assert loading.cap_worker_count(2, "--num-workers 2") == (2, None)
    assert loading.cap_worker_count(16, "--num-workers 16") == (
        2, "--num-workers 16 lowered to 2: this machine gives the run 2 CPU cores")
    args = load_script("predict").parse_args(["--ckpt", str(tmp_path), str(tmp_path), "--num-workers", "16"])
    assert args.num_workers == 2
    assert "note: --num-workers 16 lowered to 2: this machine gives the run 2 CPU cores" in capsys.readouterr().out
