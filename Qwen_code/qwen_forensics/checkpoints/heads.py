"""The forensic heads' file, shared by Task 1 and Task 3 checkpoints: the heads' weights with the
constructor arguments and tapped ViT blocks that rebuild them, loaded strictly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from qwen_forensics.checkpoints.names import HEADS_FILE
from qwen_forensics.checkpoints.tensors import load_module_safetensors, require_metadata, save_module_safetensors
from qwen_forensics.model.heads import ForensicHeads


def save_heads(heads: ForensicHeads, layers: Sequence[int], path: Path) -> None:
    """The heads with what rebuilds them: their constructor arguments and the ViT blocks they read."""
    save_module_safetensors(heads, path, {"heads_config": json.dumps(heads.config),
                                          "visual_layers": json.dumps(list(layers))})


def load_heads_file(path: Path, writer: str) -> tuple[ForensicHeads, list[int]]:
    """Rebuild heads from their saved constructor arguments and load them strictly; returns the
    heads and the ViT blocks they read. ``writer`` names the script that writes such files."""
    meta = require_metadata(path, ["heads_config", "visual_layers"], writer)
    heads = ForensicHeads.from_config(json.loads(meta["heads_config"]))
    load_module_safetensors(heads, path)
    return heads, json.loads(meta["visual_layers"])


def load_heads(ckpt_dir: str | Path) -> tuple[ForensicHeads, list[int]]:
    """The heads of a Task 1 checkpoint folder."""
    return load_heads_file(Path(ckpt_dir) / HEADS_FILE, "lora_train.py")
