"""The batched window attention gives the loop's outputs and gradients, on mixed-size batches."""

import copy

import numpy as np
import pytest
import torch
from peft import inject_adapter_in_model
from PIL import Image
from transformers import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from qwen_forensics.model.lora import make_lora_config, vision_block_targets
from qwen_forensics.model.tiny import TEXT_DIMS, VISION_DIMS
from qwen_forensics.model.window_attention import enable_batched_window_attention


def make_tower():
    torch.manual_seed(0)
    config = Qwen2_5_VLVisionConfig(**VISION_DIMS, out_hidden_size=TEXT_DIMS["hidden_size"])
    config._attn_implementation = "sdpa"
    return Qwen2_5_VisionTransformerPretrainedModel(config).eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    # 224x224 (16 windows... of 8x8 patches: 4 full windows) and 168x280 (12x20 patches: edge windows
    # of 8x4 and 4x8 patches), so window lengths differ within and across images.
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((224, 224), (168, 280))]
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=448 * 448)
    out = processor(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def test_outputs_match_the_loop(inputs):
    pixels, grid = inputs
    reference = make_tower()
    batched = copy.deepcopy(reference)
    assert enable_batched_window_attention(batched) == VISION_DIMS["depth"]
    with torch.no_grad():
        want = reference(pixels, grid_thw=grid)
        got = batched(pixels, grid_thw=grid)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)


def test_lora_gradients_match_the_loop(inputs):
    pixels, grid = inputs
    towers = []
    for batched in (False, True):
        tower = make_tower()
        tower.requires_grad_(False)
        inject_adapter_in_model(make_lora_config(vision_block_targets(tower, [0, 7]), r=4, alpha=8, dropout=0.0), tower)
        for name, p in tower.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
        if batched:
            enable_batched_window_attention(tower)
        tower(pixels, grid_thw=grid).pooler_output.square().sum().backward()
        towers.append({n: p.grad for n, p in tower.named_parameters() if p.requires_grad})
    assert towers[0].keys() == towers[1].keys() and towers[0]
    for name in towers[0]:
        assert towers[0][name].abs().sum() > 0, name
        torch.testing.assert_close(towers[1][name], towers[0][name], rtol=1e-4, atol=1e-6)


def test_non_sdpa_towers_are_left_alone():
    tower = make_tower()
    tower.config._attn_implementation = "eager"
    assert enable_batched_window_attention(tower) == 0
