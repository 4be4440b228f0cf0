"""A tiny, randomly initialised Qwen2.5-VL written in the real Hugging Face on-disk format.

The folder mirrors a downloaded ``Qwen2.5-VL-7B-Instruct`` file by file (flat ``config.json``,
sharded safetensors with an index whose keys use the original ``visual.*`` / ``model.*`` prefixes,
``generation_config.json``, byte-level BPE tokenizer with Qwen's special tokens and chat template,
``preprocessor_config.json``), so tests and the demo exercise the same loading code as the 7B model.
Only the sizes differ. Everything is deterministic given the seed: same seed, same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from qwen_forensics.model.loader import TINY_MODEL_MARKER
from qwen_forensics.demo.tokenizer import QWEN_ADDED_TOKENS, QWEN_CHAT_TEMPLATE, build_tiny_tokenizer, tokenizer_config

IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

TEXT_DIMS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}
# 32 blocks with full attention at 7/15/23/31, as in the 7B, so the shipped configs' layer lists
# (visual_layers, lora_target_layers = [7, 15, 23, 31]) run unchanged on the tiny model.
VISION_DIMS = {
    "depth": 32,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
MROPE_SECTION = [2, 3, 3]
SHARD_COUNT = 2


def _model_config(tokenizer: Tokenizer, text_layers: int) -> dict:
    """Flat legacy layout, exactly like the released Qwen2.5-VL-7B-Instruct config.json."""
    ids = {text: tokenizer.token_to_id(text) for text, _ in QWEN_ADDED_TOKENS}
    # Round the embedding table up (the 7B pads 151665 tokens to 152064) so that padding rows exist too.
    vocab_size = math.ceil(tokenizer.get_vocab_size(with_added_tokens=True) / 64) * 64
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        **TEXT_DIMS,
        "num_hidden_layers": text_layers,
        "initializer_range": 0.02,
        "max_position_embeddings": 4096,
        "max_window_layers": text_layers,
        "model_type": "qwen2_5_vl",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            **VISION_DIMS,
            "hidden_act": "silu",
            "in_chans": 3,
            "out_hidden_size": TEXT_DIMS["hidden_size"],
            "spatial_patch_size": VISION_DIMS["patch_size"],
            "tokens_per_second": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": MROPE_SECTION},
        "vocab_size": vocab_size,
    }


def _generation_config(config: dict) -> dict:
    """Same settings as the 7B release (near-greedy sampling), so eval code must handle them."""
    return {
        "bos_token_id": config["bos_token_id"],
        "pad_token_id": config["bos_token_id"],
        "do_sample": True,
        "eos_token_id": [config["eos_token_id"], config["bos_token_id"]],
        "repetition_penalty": 1.05,
        "temperature": 0.1,
        "top_p": 0.001,
        "top_k": 1,
    }


def _preprocessor_config() -> dict:
    return {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": VISION_DIMS["patch_size"],
        "temporal_patch_size": VISION_DIMS["temporal_patch_size"],
        "merge_size": VISION_DIMS["spatial_merge_size"],
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }


def _original_key(name: str) -> str:
    """transformers 5 module names -> the key names stored in Qwen's released checkpoints."""
    if name.startswith("model.visual."):
        return name[len("model.") :]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name


def _init_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Fan-in scaled normal weights.

    The config's initializer_range (0.02, the 7B's) keeps activations tiny at width 32/64, which makes
    the last-position logits almost independent of the image. Scaling by 1/sqrt(fan_in) keeps every
    layer's output at unit scale, so images change the answer logits visibly.
    """
    model_config = Qwen2_5_VLConfig(**config)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(model_config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in sorted(model.state_dict().items()):
        if param.dim() == 1 and not name.endswith(".bias"):
            value = torch.ones(param.shape)
        elif name.endswith(".bias"):
            value = torch.randn(param.shape, generator=generator) * 0.02
        else:
            # Embedding rows are looked up, not summed over, so they get unit variance.
            fan_in = 1 if name.endswith("embed_tokens.weight") else math.prod(param.shape[1:])
            value = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
        state[_original_key(name)] = value.to(torch.bfloat16).contiguous()
    return state


def _write_shards(state: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Split by size into SHARD_COUNT files plus an index, like the 7B's five shards."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    per_shard = math.ceil(total / SHARD_COUNT)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if size + nbytes > per_shard and shards[-1] and len(shards) < SHARD_COUNT:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    if len(shards) != SHARD_COUNT:
        raise RuntimeError(f"tiny model weights filled {len(shards)} shards instead of {SHARD_COUNT}")
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file_name = _shard_name(index)
        save_file(shard, str(out_dir / file_name), metadata={"format": "pt"})
        weight_map.update({key: file_name for key in shard})
    _write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _shard_name(index: int) -> str:
    return f"model-{index:05d}-of-{SHARD_COUNT:05d}.safetensors"


OUTPUT_FILES = frozenset(
    {
        "chat_template.json",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        TINY_MODEL_MARKER,
        *(_shard_name(index) for index in range(1, SHARD_COUNT + 1)),
    }
)


def build_tiny_model(out_dir: str | Path, seed: int = 0, text_layers: int = TEXT_DIMS["num_hidden_layers"]) -> Path:
    """Write a tiny Qwen2.5-VL-Instruct folder to ``out_dir`` (created if needed) and return its path.

    ``text_layers``: decoder layers of the language model (2 by default; 28, the 7B's count, lets
    configs that name LM layers by index, such as ``language_model.layers.27.self_attn.q_proj``, run).

    Rebuilding into a folder of an earlier tiny build overwrites it; a folder holding anything else
    (a real model, say) is refused rather than clobbered.
    """
    out = Path(out_dir)
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES) if out.is_dir() else [out.name]
        if foreign:
            raise FileExistsError(
                f"{out} holds files a tiny-model build does not write ({', '.join(foreign[:5])}); "
                "give an empty or new folder, or one written by an earlier tiny build"
            )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer.model.save(str(out), None)
    _write_json(out / "tokenizer_config.json", tokenizer_config(tokenizer))
    _write_json(out / "chat_template.json", {"chat_template": QWEN_CHAT_TEMPLATE})
    _write_json(out / "preprocessor_config.json", _preprocessor_config())
    if text_layers < 1:
        raise ValueError(f"text_layers must be >= 1, got {text_layers}")
    config = _model_config(tokenizer, text_layers)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", _generation_config(config))
    _write_shards(_init_state_dict(config, seed), out)
    (out / TINY_MODEL_MARKER).write_text(
        "This Qwen2.5-VL has the real model's on-disk format but tiny random weights (qwen_forensics.demo.tiny).\n"
        "It exists to run the code paths; its results say nothing about how well the method works.\n",
        encoding="utf-8")
    return out
