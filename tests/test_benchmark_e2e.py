"""benchmark_e2e.py's scale-out hook on the CPU: its arguments, the launch command per process count, the
[speed] lines of the scripts read back from a real process, and the scaling rows (efficiency =
images/s at N / (N x images/s at 1))."""

from __future__ import annotations

import sys

import pytest

from scripts import load_script

e2e = load_script("benchmark_e2e")


def test_process_counts_must_be_distinct_and_include_one(capsys):
    args = e2e.parse_args(["--workdir", "w", "--out", "o.json", "--num-processes", "1", "2", "4", "8"])
    assert args.num_processes == [1, 2, 4, 8]
    assert e2e.parse_args(["--workdir", "w", "--out", "o.json"]).num_processes is None
    for counts in (["2", "4"], ["1", "1", "2"], ["0", "1"]):
        with pytest.raises(SystemExit):
            e2e.parse_args(["--workdir", "w", "--out", "o.json", "--num-processes", *counts])
        assert "including 1" in capsys.readouterr().err


def test_launch_command_per_process_count(tmp_path):
    script = tmp_path / "x.py"
    assert e2e.launch_command(script, 1) == [sys.executable, str(script)]
    command = e2e.launch_command(script, 4)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[-1] == str(script)


FAKE_SCRIPT = """
from qwen_forensics.training.runtime import evaluation_speed_line, speed_line
print(speed_line(4096, 20.0, "epoch 0 (training loop)", 0.5))
print(evaluation_speed_line(4000, 10.0, 16.0, 0.25))
"""


def test_the_scripts_speed_lines_are_read_back(tmp_path):
    """A process printing the scripts' own [speed] lines (``training.runtime``): both are parsed."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SCRIPT)
    row = e2e.run_script("fake", str(script), tmp_path, [], tmp_path, argv=[], processes=1)
    assert row["returncode"] == 0 and row["processes"] == 1
    train, evaluation = row["speed"]
    assert train["images_per_s"] == pytest.approx(204.8) and train["data_wait_s"] == 0.5
    assert evaluation["images_per_s"] == pytest.approx(400.0)
    assert evaluation["whole_run_images_per_s"] == pytest.approx(250.0)
    assert (tmp_path / "fake.log").read_text().count("[speed]") == 2


def _row(*speed: dict, returncode: int = 0) -> dict:
    return {"returncode": returncode, "speed": list(speed)}


def test_scaling_rows_and_table():
    def train(rate):
        return _row({"what": "epoch 0 (training loop)", "images_per_s": rate})

    def evaluation(inference, whole):
        return _row({"what": "evaluation (inference)", "images_per_s": inference, "whole_run_images_per_s": whole})

    rows = e2e.scaling_rows({
        "task1_train": {1: train(100.0), 2: train(190.0), 4: train(360.0)},
        "task1_head_eval": {1: evaluation(300.0, 50.0), 2: evaluation(570.0, 80.0)},
        "task3_train": {2: train(70.0)},
        "task2_train": {1: train(40.0), 2: _row(returncode=1)},
    })
    by_key = {(r["step"], r["processes"]): r for r in rows}
    assert [by_key["task1_train", n]["efficiency"] for n in (1, 2, 4)] == pytest.approx([1.0, 0.95, 0.9])
    head = by_key["task1_head_eval", 2]
    assert head["images_per_s"] == 80.0 and head["efficiency"] == pytest.approx(0.8)
    assert head["inference_images_per_s"] == 570.0 and head["inference_efficiency"] == pytest.approx(0.95)
    assert by_key["task3_train", 2]["efficiency"] is None, "no one-process baseline"
    assert by_key["task2_train", 2]["images_per_s"] is None and by_key["task2_train", 2]["efficiency"] is None
    table = e2e.format_scaling(rows)
    assert "| task1_train | 4 | 360.0 | 90.0% |  |  |" in table
    assert "| task1_head_eval | 2 | 80.0 | 80.0% | 570.0 | 95.0% |" in table
