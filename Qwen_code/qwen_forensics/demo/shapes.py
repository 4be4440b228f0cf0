"""The published Qwen2.5-VL-7B dimensions (SPEC 5), for benchmarks that need the real shapes with random
weights: a 7B-shaped config that reuses a tiny model folder's token ids, so that folder's tokenizer
and processor build valid inputs for it."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Qwen2_5_VLConfig

QWEN25_VL_7B = {
    "text": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0,
                 rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, max_position_embeddings=128000),
    "vision": dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
                   temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584, tokens_per_second=2),
}
TOKEN_ID_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def seven_b_config(tiny_dir: str | Path) -> Qwen2_5_VLConfig:
    """7B dimensions with the tiny folder's token ids (so its tokenizer builds valid inputs)."""
    tiny = json.loads((Path(tiny_dir) / "config.json").read_text())
    ids = {k: tiny[k] for k in TOKEN_ID_KEYS if k in tiny}
    text = {**QWEN25_VL_7B["text"], "bos_token_id": tiny.get("bos_token_id"), "eos_token_id": tiny.get("eos_token_id")}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_7B["vision"], **ids)
    cfg._attn_implementation = "sdpa"
    return cfg
