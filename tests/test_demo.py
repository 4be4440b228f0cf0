"""The README's demo command, as a new user runs it: ``.ci/demo --quick`` on a copy of the repository,
with no browser anywhere on PATH (the demo needs only Python), ending with the results table, the
tiny-model caveat and the next commands. The copy reuses this environment's packages through a .venv
whose .pth points at them (.ci/setup finds it up to date and installs nothing)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from browser import BROWSER_NAMES

REPO = Path(__file__).resolve().parents[1]


def repository_copy(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of this checkout (what a clone has)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def reuse_this_environment(repo: Path) -> None:
    """``repo/.venv`` on this interpreter's packages, stamped as set up for the copy's requirements.txt."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    packages = next((repo / ".venv" / "lib").glob("python*/site-packages"))
    (packages / "project_packages.pth").write_text(f"{repo / 'Qwen_code'}\n" + "\n".join(site.getsitepackages()) + "\n")
    digest = hashlib.sha256((repo / "requirements.txt").read_bytes()).hexdigest()
    (repo / ".venv" / ".requirements.sha256").write_text(digest + "\n")


def path_without_browsers(bin_dir: Path) -> str:
    """One folder with every program of PATH except the browsers."""
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(BROWSER_NAMES) or (bin_dir / name).exists():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                (bin_dir / name).symlink_to(entry.path)
    return str(bin_dir)


@pytest.mark.slow
def test_demo_runs_without_a_browser(tmp_path):
    repo = repository_copy(tmp_path / "repo")
    reuse_this_environment(repo)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = path_without_browsers(tmp_path / "bin")
    assert subprocess.run(["bash", "-c", "command -v chromium chromium-browser google-chrome"], env=env,
                          capture_output=True).returncode != 0, "a browser is still on PATH"
    done = subprocess.run(["bash", ".ci/demo", "--quick", "--workspace", str(tmp_path / "ws")], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1800)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "setup: .venv is up to date" in printed
    results = printed[printed.index("Results (paths under"):]
    assert results.splitlines()[1].split() == ["task", "metric", "value", "report"]
    expected = [("Task 1 / subtask 1", "auroc", "task1_modular_lora/subtask_vit_head_eval"),
                ("Task 1 / subtask 1", "pixel_iou", "task1_modular_lora/subtask_vit_head_eval"),
                ("Task 1 / subtask 2", "auroc", "task1_modular_lora/subtask_full_model_eval"),
                ("Task 2", "auroc", "task2_lm_lora/evaluation"), ("Task 3", "lm_auroc", "task3_hybrid_lora/evaluation"),
                ("Task 3", "head_auroc", "task3_hybrid_lora/evaluation")]
    for task, metric, folder in expected:
        pattern = rf"(?m)^{re.escape(task)} +{metric} +[01]\.\d{{3}} +{folder}/report\.html$"
        assert re.search(pattern, results), (task, metric, results[:1500])
    ws = tmp_path / "ws"
    for page in ("task1_modular_lora/training/training.html", "task2_lm_lora/training/training.html",
                 "task3_hybrid_lora/training/training.html", "predictions/index.html",
                 "task1_modular_lora/subtask_vit_head_eval/report.html"):
        assert (ws / page).is_file() and str(ws / page) in printed, page
    assert "TINY RANDOM model" in results and "total time:" in results
    assert f"python Qwen_code/predict.py --ckpt {ws / 'task1_modular_lora/training/final'} YOUR_IMAGES/" in results
    assert "[tiny model]" in printed, "the scripts say they run the demo's random model"


def test_step_environment_caps_threads_and_keeps_lower_settings(monkeypatch):
    import demo
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = demo.capped_env(2)
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OPENBLAS_NUM_THREADS"]) == ("2", "1", "2")
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert demo.capped_env(2)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_estimates_follow_the_pace_of_the_steps_done():
    import demo
    progress = demo.Progress(["task1", "task2"], quick=False)
    assert progress.left() == demo.BASE_SECONDS["task1"] + demo.BASE_SECONDS["task2"]
    progress.done["task1"] = 2 * demo.BASE_SECONDS["task1"]
    assert progress.estimate("task2") == 2 * demo.BASE_SECONDS["task2"] == progress.left()
