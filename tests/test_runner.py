"""The experiment runner: steps in order, flags passed through, stop at the first failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_forensics.runner import Step, experiment_main

REPO = Path(__file__).resolve().parents[1]
T1 = REPO / "Qwen_code" / "task1_modular_lora"

# A fake pipeline step: appends its name and arguments to a log, then exits with the given code.
STEP_SOURCE = """
import json, sys
name, code, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(log, "a") as f:
    f.write(json.dumps({"name": name, "argv": sys.argv[4:], "python": sys.executable}) + "\\n")
sys.exit(code)
"""


def _steps(tmp_path: Path, codes: dict[str, int]) -> tuple[list[Step], Path]:
    log = tmp_path / "log.jsonl"
    steps = []
    for name, code in codes.items():
        script = tmp_path / f"{name}.py"
        script.write_text(f"import sys\nsys.argv[1:1] = [{name!r}, '{code}', {str(log)!r}]\n{STEP_SOURCE}")
        steps.append(Step(name, script, f"fake step {name}"))
    return steps, log


def _log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_steps_run_in_order_with_root_config_and_overrides(tmp_path, capsys):
    steps, log = _steps(tmp_path, {"train": 0, "eval": 0})
    code = experiment_main("demo", steps, ["--root", "/ws", "--train-set", "epochs=1", "--train-set", "a.b=[1, 2]",
                                           "--eval-config", "cfg.json", "--eval-set", "batch_size=4"])
    assert code == 0
    ran = _log(log)
    assert [r["name"] for r in ran] == ["train", "eval"]
    assert ran[0]["argv"] == ["--root", "/ws", "--set", "epochs=1", "--set", "a.b=[1, 2]"]
    assert ran[1]["argv"] == ["--config", "cfg.json", "--root", "/ws", "--set", "batch_size=4"]
    assert {r["python"] for r in ran} == {sys.executable}
    assert "all 2 step(s) finished: train, eval" in capsys.readouterr().out


def test_first_failure_stops_the_run_and_names_the_step(tmp_path, capsys):
    steps, log = _steps(tmp_path, {"prepare": 0, "train": 3, "eval": 0})
    assert experiment_main("demo", steps, []) == 3
    assert [r["name"] for r in _log(log)] == ["prepare", "train"]
    err = capsys.readouterr().err
    assert "step 2/3 'train' (fake step train) failed with exit code 3; not run: eval" in err
    assert str(tmp_path / "train.py") in err


def test_skipping_steps(tmp_path):
    steps, log = _steps(tmp_path, {"train": 3, "eval": 0})
    assert experiment_main("demo", steps, ["--skip-train"]) == 0
    assert [r["name"] for r in _log(log)] == ["eval"]
    assert experiment_main("demo", steps, ["--skip-train", "--skip-eval"]) == 2


@pytest.mark.parametrize("runner, key", [("run_subtask_vit_head_experiment.py", "ckpt_path"),
                                         ("run_subtask_full_model_experiment.py", "lora_checkpoint")])
def test_task1_runners_stop_before_a_step_that_cannot_start(tmp_path, runner, key):
    """The real runners on a root without a checkpoint: the eval step would fail at once, so the
    runner says why before running it (exit code 2)."""
    done = subprocess.run([sys.executable, str(T1 / runner), "--root", str(tmp_path), "--skip-train"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "experiment not started" in done.stderr
    assert f"step 'eval': {key} = {tmp_path}/task1_modular_lora/training/final does not exist" in done.stderr
    help_text = subprocess.run([sys.executable, str(T1 / runner), "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert all(flag in help_text for flag in ("--root", "--skip-train", "--train-set", "--eval-set"))


SEED = Path(__file__).resolve().parent / "data" / "seed_configs"
T2 = REPO / "Qwen_code" / "task2_lm_lora"
T3 = REPO / "Qwen_code" / "task3_hybrid_lora"


def _runner(script: Path, root: Path, *configs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), "--root", str(root), *configs], capture_output=True,
                          text=True, timeout=120)


def test_runners_check_the_users_configs_fit_together_before_running(user_root):
    """The user's files for one task come from different versions of the earlier scripts: the runner
    says which link is broken and how to connect it, before any step runs."""
    done = _runner(T1 / "run_subtask_vit_head_experiment.py", user_root,
                   "--train-config", str(SEED / "task1_config_lora.json"),
                   "--eval-config", str(SEED / "task1_subtask_vit_head_eval_config_eval.json"))
    assert done.returncode == 2 and "experiment not started" in done.stderr
    trained = user_root / "outputs_lora_joint/final_trained_heads_2_all"
    assert (f"step 'eval' reads ckpt_path = {user_root}/task1_modular_lora/training/modular_vit_lora, but step "
            f"'train' writes its final checkpoint to {trained}; pass --eval-set ckpt_path={trained}") in done.stderr
    assert not (user_root / "outputs_lora_joint").exists(), "nothing ran"

    done = _runner(T2 / "run_task2_experiment.py", user_root, "--map-config", str(SEED / "task2_config_map.json"),
                   "--train-config", str(SEED / "task2_config_lora_trainer.json"),
                   "--infer-config", str(SEED / "task2_config_lora_infer.json"))
    mapped = user_root / "task2_lm_lora/datasets/train_dataset_mapped/records.jsonl"
    assert done.returncode == 2 and f"pass --train-set train_dataset_path={mapped}" in done.stderr
    assert "reads lora_path" not in done.stderr, "the trainer's adapter is the one the infer config names"

    done = _runner(T3 / "run_task3_experiment.py", user_root, "--train-config", str(SEED / "task3_config_hybrid_train.json"),
                   "--eval-config", str(SEED / "task3_config_hybrid_eval.json"))
    assert done.returncode == 2
    assert (f"step 'eval': ann_eval = {user_root}/data/testingset2/test_idx.json does not exist and no earlier step "
            "writes it") in done.stderr
    assert "head_checkpoint" not in done.stderr, "training writes what the eval config reads"
