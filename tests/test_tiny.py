"""The tiny Qwen2.5-VL: deterministic build, real on-disk format, strict loading, forward and generate."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from qwen_forensics.config.dtypes import resolve_dtype
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.demo.tokenizer import QWEN_ADDED_TOKENS
from qwen_forensics.model.loader import get_language_model, get_visual, load_model, load_processor, load_vision_tower
from qwen_forensics.prompts import DEFAULT_PROMPT, prompt_text_for


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _read_all(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            state.update({key: handle.get_tensor(key) for key in handle.keys()})
    return state


def _rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace the folder's shards by one model.safetensors (the unsharded layout)."""
    for shard in folder.glob("model*.safetensors*"):
        shard.unlink()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_build_is_deterministic_and_seeded(tiny_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digests(again) == _digests(tiny_dir)
    first, second = _digests(tiny_dir), _digests(other)
    assert first["tokenizer.json"] == second["tokenizer.json"]
    assert first["model-00001-of-00002.safetensors"] != second["model-00001-of-00002.safetensors"]


def test_seed_0_weights_are_pinned(tiny_dir):
    """Pinned values: the build must give the same model on every machine and library version."""
    state = _read_all(tiny_dir)
    expected = {
        "lm_head.weight": [-0.140625, -0.14453125, -0.03125, -0.05419921875],
        "visual.blocks.7.attn.qkv.weight": [-0.1806640625, 0.1396484375, -0.10546875, -0.279296875],
        "visual.merger.mlp.2.weight": [-0.001983642578125, -0.0537109375, -0.11328125, 0.10302734375],
    }
    for key, values in expected.items():
        assert state[key].dtype == torch.bfloat16
        assert state[key].flatten()[:4].float().tolist() == values, key


def test_build_refuses_a_folder_with_other_files(tiny_dir, tmp_path):
    rebuilt = build_tiny_model(Path(shutil.copytree(tiny_dir, tmp_path / "rebuild")), seed=0)
    assert _digests(rebuilt) == _digests(tiny_dir)
    real = tmp_path / "Qwen2.5-VL-7B-Instruct"
    real.mkdir()
    (real / "model-00001-of-00005.safetensors").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match="model-00001-of-00005.safetensors"):
        build_tiny_model(real)
    assert sorted(p.name for p in real.iterdir()) == ["model-00001-of-00005.safetensors"]


def test_folder_has_the_released_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert names == {
        "chat_template.json",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "TINY_RANDOM_MODEL.txt",  # the marker by which the loader prints the tiny model's caveat
    }
    weight_map = json.loads((tiny_dir / "model.safetensors.index.json").read_text())["weight_map"]
    prefixes = {key.split(".")[0] for key in weight_map}
    assert prefixes == {"visual", "model", "lm_head"}
    assert not any(key.startswith(("model.visual.", "model.language_model.")) for key in weight_map)


def test_config_dims_and_token_ids_match_tokenizer(tiny_dir):
    model = load_model(tiny_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    config = model.config
    vision, text = config.vision_config, config.text_config
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.intermediate_size) == (32, 32, 2, 64)
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (14, 2, 2)
    assert vision.window_size == 112 and list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert vision.out_hidden_size == text.hidden_size == 64
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads, text.intermediate_size) == (2, 4, 2, 128)
    assert list(text.rope_parameters["mrope_section"]) == [2, 3, 3]
    assert text.vocab_size >= len(tokenizer) == 1024 + len(QWEN_ADDED_TOKENS)
    ids = tokenizer.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.vision_end_token_id == ids("<|vision_end|>")
    assert text.eos_token_id == ids("<|im_end|>") == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [ids("<|im_end|>"), ids("<|endoftext|>")]
    assert len(set(ids([text for text, _ in QWEN_ADDED_TOKENS]))) == len(QWEN_ADDED_TOKENS)


def test_load_model_dtype_eval_and_accessors(tiny_dir):
    model = load_model(tiny_dir)
    assert not model.training
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(load_model(tiny_dir, dtype="float32", device="cpu").parameters()).device == torch.device("cpu")
    assert get_visual(model) is model.model.visual
    assert get_language_model(model) is model.model.language_model
    with pytest.raises(AttributeError, match="model.visual"):
        get_visual(torch.nn.Linear(2, 2))
    with pytest.raises(AttributeError, match="model.language_model"):
        get_language_model(torch.nn.Linear(2, 2))


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_dtype("int8")


def test_missing_folder_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json.*make_tiny_model"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        load_vision_tower(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_processor(tmp_path, 224)


def test_vision_tower_alone_equals_the_full_models_tower(tiny_dir):
    model = load_model(tiny_dir, dtype="float32")
    tower = load_vision_tower(tiny_dir, dtype="float32")
    assert not tower.training
    full = get_visual(model).state_dict()
    alone = tower.state_dict()
    assert full.keys() == alone.keys()
    assert all(torch.equal(full[key], alone[key]) for key in full)
    processor = load_processor(tiny_dir, 224)
    pixels = processor.image_processor(images=[_image(224, 224, 0)], return_tensors="pt")
    with torch.no_grad():
        expected = get_visual(model)(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        got = tower(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
    assert got.shape == (64, 64)
    torch.testing.assert_close(got, expected)


def test_bf16_vision_tower_matches_the_bf16_full_model(tiny_dir):
    model = load_model(tiny_dir)
    tower = load_vision_tower(tiny_dir)
    assert tower.patch_embed.proj.weight.dtype == torch.bfloat16
    assert tower.rotary_pos_emb.inv_freq.dtype == torch.float32
    pixels = load_processor(tiny_dir, 112).image_processor(images=[_image(112, 112, 5)], return_tensors="pt")
    with torch.no_grad():
        expected = get_visual(model)(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        got = tower(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
    assert torch.equal(got, expected)


def test_vision_tower_reads_transformers5_prefix_from_one_file(tiny_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "saved_by_v5"))
    state = _read_all(tiny_dir)
    _rewrite_weights(copy, {("model." + k if k.startswith("visual.") else k): v for k, v in state.items()})
    tower = load_vision_tower(copy, dtype="float32")
    key = "blocks.5.attn.qkv.weight"
    assert torch.equal(tower.state_dict()[key], state["visual." + key].float())


def test_renamed_key_fails_loudly(tiny_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "renamed"))
    state = _read_all(tiny_dir)
    state["visual.blocks.2.attn.qkv.weight_renamed"] = state.pop("visual.blocks.2.attn.qkv.weight")
    _rewrite_weights(copy, state)
    with pytest.raises(RuntimeError, match=r"1 missing_keys: \['blocks\.2\.attn\.qkv\.weight'\]; 1 unexpected_keys: \['blocks\.2\.attn\.qkv\.weight_renamed'\]"):
        load_vision_tower(copy)
    with pytest.raises(RuntimeError, match="missing_keys.*qkv.weight"):
        load_model(copy)


def test_both_prefixes_at_once_is_an_error(tiny_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "both"))
    state = _read_all(tiny_dir)
    state["model.visual.merger.ln_q.weight"] = state["visual.merger.ln_q.weight"].clone()
    _rewrite_weights(copy, state)
    with pytest.raises(RuntimeError, match="exactly one of the prefixes"):
        load_vision_tower(copy)


def test_load_processor_pins_the_pixel_count(tiny_dir):
    processor = load_processor(tiny_dir, 224)
    square = processor.image_processor(images=[_image(224, 224, 1)], return_tensors="pt")
    assert square["image_grid_thw"].tolist() == [[1, 16, 16]]
    # Anything that is not the letterboxed square is resized to the same area, never kept as is.
    portrait = processor.image_processor(images=[_image(300, 200, 2)], return_tensors="pt")
    assert portrait["image_grid_thw"].tolist() == [[1, 18, 12]]
    native = load_processor(tiny_dir, None).image_processor(images=[_image(300, 200, 2)], return_tensors="pt")
    assert native["image_grid_thw"].tolist() == [[1, 22, 14]]
    with pytest.raises(ValueError, match="multiple of 28"):
        load_processor(tiny_dir, 100)
    with pytest.raises(ValueError, match="positive int"):
        load_processor(tiny_dir, "448")


def test_batch_of_two_sizes_runs_forward_and_generate(tiny_dir):
    model = load_model(tiny_dir, dtype="float32")
    processor = load_processor(tiny_dir, None)
    prompt = prompt_text_for(processor, DEFAULT_PROMPT)
    inputs = processor(
        text=[prompt, prompt],
        images=[_image(224, 224, 3), _image(168, 280, 4)],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16], [1, 12, 20]]
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [64, 60]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    # The two images must lead to different answer logits, or the tiny model could not show learning.
    assert (logits[0, -1] - logits[1, -1]).abs().max() > 0.1
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
