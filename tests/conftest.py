"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

# The inputs every shipped config names by default, relative to the user's root.
DEFAULT_INPUTS = ("data/trainingset2/train_idx.json", "data/trainingset2/val_idx.json",
                  "data/trainingset2/annotation.json", "data/testset2/annotation.json")


def make_user_layout(root: Path) -> Path:
    """Empty stand-ins for the user's model folder and index files under ``root`` (for config tests:
    scripts check that every input exists before loading anything)."""
    (root / "Qwen2.5-VL-7B-Instruct").mkdir(parents=True, exist_ok=True)
    for rel in DEFAULT_INPUTS:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("[]\n")
    return root


@pytest.fixture
def user_layout():
    """:func:`make_user_layout`, for tests that lay out several roots."""
    return make_user_layout


@pytest.fixture
def user_root(tmp_path) -> Path:
    return make_user_layout(tmp_path / "root")
