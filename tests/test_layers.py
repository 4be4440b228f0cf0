"""The library's layering (pyproject.toml's import-linter contract) holds, and the contract really
catches an upward import: the same check on a copy of the library with one added fails naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(package_parent: Path, config: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_no_package_imports_a_layer_above_it():
    done = lint(REPO / "Qwen_code", REPO / "pyproject.toml", REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    copy = tmp_path / "code"
    shutil.copytree(REPO / "Qwen_code" / "qwen_forensics", copy / "qwen_forensics",
                    ignore=shutil.ignore_patterns("__pycache__"))
    paths = copy / "qwen_forensics" / "config" / "paths.py"
    paths.write_text(paths.read_text() + "\nfrom qwen_forensics.evaluation import metrics  # noqa: E402\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    done = lint(copy, tmp_path / "pyproject.toml", tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "qwen_forensics.config.paths -> qwen_forensics.evaluation" in done.stdout
