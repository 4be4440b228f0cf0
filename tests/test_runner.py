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


@pytest.mark.parametrize("runner, evaluator", [("run_subtask_vit_head_experiment.py", "lora_eval.py"),
                                               ("run_subtask_full_model_experiment.py", "full_model_eval.py")])
def test_task1_runners_exit_with_the_failing_steps_code(tmp_path, runner, evaluator):
    """The real runners on a root without a checkpoint: the eval step fails, the runner says so."""
    done = subprocess.run([sys.executable, str(T1 / runner), "--root", str(tmp_path), "--skip-train"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "step 1/1 'eval'" in done.stderr and "failed with exit code" in done.stderr
    assert evaluator in done.stderr
    help_text = subprocess.run([sys.executable, str(T1 / runner), "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert all(flag in help_text for flag in ("--root", "--skip-train", "--train-set", "--eval-set"))
