"""ViT feature tap: cell (i, j) of a tapped grid must be patch (i, j) of its image (SPEC 6.1).

The vision tower is built from a Qwen2_5_VLVisionConfig with the tiny-model dimensions (random
init), and inputs come from the real Qwen2-VL image processor with resizing disabled by its
pixel bounds, so one changed patch of an image changes exactly one row of pixel_values.
"""

import weakref
from functools import partial

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VisionTransformerPretrainedModel,
                                                                Qwen2_5_VLVisionBlock)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from qwen_forensics.model.tap import ViTFeatureTap, compute_window_index, patch_order

VISION = dict(
    depth=8,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=[3, 7],
    out_hidden_size=64,
)
PATCH = 14
WINDOW_PATCHES = 112 // 14
CHANGE_TOL = 1e-6


def make_tower(seed=0):
    torch.manual_seed(seed)
    return Qwen2_5_VisionTransformerPretrainedModel(Qwen2_5_VLVisionConfig(**VISION)).eval()


@pytest.fixture(scope="module")
def tower():
    return make_tower()


@pytest.fixture(scope="module")
def processor():
    return Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=2048 * 2048)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),  # 16 x 16 patches
        rng.integers(0, 256, (168, 280, 3), dtype=np.uint8),  # 12 x 20 patches
    )


def encode(processor, imgs):
    out = processor(images=list(imgs), return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def with_changed_patch(img, row, col):
    img = img.copy()
    img[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = 255 - img[
        row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH
    ]
    return img


def window_of(row, col, h, w):
    """Cells of the attention window holding patch (row, col): windows of WINDOW_PATCHES, from the origin."""
    expected = torch.zeros(h, w, dtype=torch.bool)
    r0, c0 = row // WINDOW_PATCHES * WINDOW_PATCHES, col // WINDOW_PATCHES * WINDOW_PATCHES
    expected[r0 : r0 + WINDOW_PATCHES, c0 : c0 + WINDOW_PATCHES] = True
    return expected


def changed_cells(a, b):
    return (a - b).abs().amax(0) > CHANGE_TOL


def run_with_raw(tower, pixel_values, grid_thw, layer):
    """Tower forward that also returns the raw (sequence-order) output of one block."""
    raw = {}
    handle = tower.blocks[layer].register_forward_hook(lambda m, a, o: raw.setdefault("x", o))
    try:
        with torch.no_grad():
            out = tower(pixel_values, grid_thw=grid_thw)
    finally:
        handle.remove()
    return out, raw["x"]


@pytest.mark.parametrize("patch", [(9, 17), (2, 5), (11, 0), (7, 8)])
def test_window_block_change_stays_in_its_window(tower, processor, images, patch):
    img_a, img_b = images
    row, col = patch
    tap = ViTFeatureTap(tower, [0])
    try:
        pv, grid = encode(processor, (img_a, img_b))
        pv2, grid2 = encode(processor, (img_a, with_changed_patch(img_b, row, col)))
        assert grid.tolist() == [[1, 16, 16], [1, 12, 20]] and torch.equal(grid, grid2)
        assert ((pv - pv2).abs().amax(1) > 0).sum() == 1

        _, raw1 = run_with_raw(tower, pv, grid, 0)
        a1, b1 = tap.grids()[0]
        _, raw2 = run_with_raw(tower, pv2, grid2, 0)
        a2, b2 = tap.grids()[0]
    finally:
        tap.remove()

    assert a1.shape == (32, 16, 16) and b1.shape == (32, 12, 20)
    assert torch.equal(a1, a2), "the other image must not change at all"
    expected = window_of(row, col, 12, 20)
    assert torch.equal(changed_cells(b1, b2), expected)

    naive1 = raw1[256:].reshape(12, 20, -1).permute(2, 0, 1)
    naive2 = raw2[256:].reshape(12, 20, -1).permute(2, 0, 1)
    assert changed_cells(naive1, naive2).sum() == expected.sum()
    assert not torch.equal(changed_cells(naive1, naive2), expected), "the naive reshape must fail this check"


def test_window_block_change_in_first_image(tower, processor, images):
    img_a, img_b = images
    tap = ViTFeatureTap(tower, [0])
    try:
        with torch.no_grad():
            tower(*encode(processor, (img_a, img_b)))
            a1, b1 = tap.grids()[0]
            tower(*encode(processor, (with_changed_patch(img_a, 13, 6), img_b)))
            a2, b2 = tap.grids()[0]
    finally:
        tap.remove()
    assert torch.equal(b1, b2)
    assert torch.equal(changed_cells(a1, a2), window_of(13, 6, 16, 16))


def test_full_attention_block_change_moves_whole_image_only(tower, processor, images):
    img_a, img_b = images
    tap = ViTFeatureTap(tower, [3, 7])
    try:
        with torch.no_grad():
            tower(*encode(processor, (img_a, img_b)))
            before = tap.grids()
            tower(*encode(processor, (img_a, with_changed_patch(img_b, 1, 1))))
            after = tap.grids()
    finally:
        tap.remove()
    for (a1, b1), (a2, b2) in zip(before, after):
        assert torch.equal(a1, a2)
        assert changed_cells(b1, b2).all()


def test_grids_regrouped_match_library_merger(tower, processor, images):
    """The library un-permutes after its merger; regrouping our last-block grids must reproduce it."""
    tap = ViTFeatureTap(tower, [7])
    try:
        with torch.no_grad():
            out = tower(*encode(processor, images))
            merged = []
            for grid in tap.grids()[0]:
                c, h, w = grid.shape
                units = grid.permute(1, 2, 0).reshape(h // 2, 2, w // 2, 2, c).permute(0, 2, 1, 3, 4)
                merged.append(tower.merger(units.reshape(-1, c)))
    finally:
        tap.remove()
    torch.testing.assert_close(torch.cat(merged), out.pooler_output, rtol=0, atol=1e-6)


def test_cell_is_its_own_patch_when_block_is_identity(processor, images):
    """With block 0's residual branches zeroed its output is the per-patch embedding: a changed patch
    must change exactly its own cell, which also pins the order inside each 2x2 merge unit."""
    tower = make_tower()
    with torch.no_grad():
        for linear in (tower.blocks[0].attn.proj, tower.blocks[0].mlp.down_proj):
            linear.weight.zero_()
            linear.bias.zero_()
    img_a, img_b = images
    tap = ViTFeatureTap(tower, [0])
    try:
        with torch.no_grad():
            tower(*encode(processor, (img_a, img_b)))
            a1, b1 = tap.grids()[0]
            for row, col in [(0, 1), (1, 0), (1, 1), (9, 17), (11, 19), (4, 10)]:
                tower(*encode(processor, (img_a, with_changed_patch(img_b, row, col))))
                a2, b2 = tap.grids()[0]
                expected = torch.zeros(12, 20, dtype=torch.bool)
                expected[row, col] = True
                assert torch.equal(a1, a2)
                assert torch.equal(changed_cells(b1, b2), expected), (row, col)
    finally:
        tap.remove()


def library_window_index(tower, grid_thw):
    try:
        from transformers.vision_utils import get_vision_window_index
    except ImportError:
        return tower.get_window_index(grid_thw)[0]
    cfg = tower.config
    return get_vision_window_index(grid_thw, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)[0]


@pytest.mark.parametrize(
    "grids",
    [
        [[1, 16, 16], [1, 12, 20]],
        [[1, 32, 32]],
        [[1, 6, 10], [1, 8, 8], [1, 34, 18]],
        [[1, 2, 2]],
        [[1, 16, 24], [1, 40, 14], [1, 16, 16]],
    ],
)
def test_window_index_matches_library(tower, grids):
    grid_thw = torch.tensor(grids)
    ours = compute_window_index(grid_thw, 2, 112, 14)
    assert torch.equal(ours, library_window_index(tower, grid_thw))


def test_window_index_small_windows_by_hand():
    # 56 px windows = 2x2 merge units; a 6x8-patch image has 3x4 units -> windows of units
    # [0,1,4,5], [2,3,6,7], [8,9], [10,11].
    ours = compute_window_index(torch.tensor([[1, 6, 8]]), 2, 56, 14)
    assert ours.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11]


def test_patch_order_is_a_permutation_and_rejects_video():
    grid_thw = torch.tensor([[1, 16, 16], [1, 12, 20]])
    order = patch_order(grid_thw, 2, 112, 14)
    assert torch.equal(order.sort().values, torch.arange(496))
    with pytest.raises(ValueError, match="images only"):
        patch_order(torch.tensor([[2, 16, 16]]), 2, 112, 14)
    with pytest.raises(ValueError, match="spatial_merge_size"):
        compute_window_index(torch.tensor([[1, 15, 16]]), 2, 112, 14)


def test_state_is_replaced_each_forward_and_stacked(tower, processor, images):
    img_a, img_b = images
    tap = ViTFeatureTap(tower, [0, 3])
    try:
        with torch.no_grad():
            tower(*encode(processor, (img_a, img_b)))
            old = weakref.ref(tap._outputs[0])
            with pytest.raises(ValueError, match="use grids"):
                tap.stacked()
            flipped = img_a[:, ::-1].copy()
            tower(*encode(processor, (img_a, flipped)))
            assert old() is None, "the previous forward's tensors must be released"
            assert tap.grid_thw.tolist() == [[1, 16, 16], [1, 16, 16]]
            stacked = tap.stacked()
            grids = tap.grids()
            for layer_stack, layer_grids in zip(stacked, grids):
                assert layer_stack.shape == (2, 32, 16, 16)
                torch.testing.assert_close(layer_stack, torch.stack(layer_grids), rtol=0, atol=0)
            tower(*encode(processor, (img_b,)))
            assert [len(g) for g in tap.grids()] == [1, 1]
            assert tap.grids()[0][0].shape == (32, 12, 20)
        tap.clear()
        with pytest.raises(RuntimeError, match="holds no features"):
            tap.grids()
    finally:
        tap.remove()


def test_remove_detaches_every_hook(processor, images):
    tower = make_tower()
    with ViTFeatureTap(tower, [0, 3]) as tap:
        with torch.no_grad():
            tower(*encode(processor, images))
        assert len(tap.grids()) == 2
    assert not tower._forward_pre_hooks and not tower._forward_hooks
    assert all(not blk._forward_hooks for blk in tower.blocks)
    with torch.no_grad():
        tower(*encode(processor, images))
    with pytest.raises(RuntimeError, match="holds no features"):
        tap.grids()


def test_bad_arguments_fail_clearly(tower):
    with pytest.raises(ValueError, match=r"out of range.*8 blocks"):
        ViTFeatureTap(tower, [0, 8])
    with pytest.raises(ValueError, match="out of range"):
        ViTFeatureTap(tower, [-1])
    with pytest.raises(ValueError, match="at least one"):
        ViTFeatureTap(tower, [])
    with pytest.raises(ValueError, match="twice"):
        ViTFeatureTap(tower, [3, 3])
    with pytest.raises(TypeError, match="vision tower"):
        ViTFeatureTap(nn.Linear(2, 2), [0])
    assert all(not blk._forward_hooks for blk in tower.blocks)


def features_and_grads(tower, pixel_values, grid_thw, layers):
    """Tap features, and parameter grads of a loss built from the tap features alone."""
    tap = ViTFeatureTap(tower, layers)
    try:
        tower(pixel_values, grid_thw=grid_thw)
        grids = tap.grids()
        loss = sum((g * torch.linspace(-1, 1, g.numel()).view_as(g)).sum() for layer in grids for g in layer)
        captured = [tap._outputs[layer] for layer in layers]
        loss.backward()
        assert all(tap._outputs[layer] is x for layer, x in zip(layers, captured)), "backward replaced the features"
        feats = [[g.detach() for g in layer] for layer in grids]
    finally:
        tap.remove()
    grads = {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad(set_to_none=True)
    return feats, grads


def test_features_keep_autograd(tower, processor, images):
    pv, grid = encode(processor, images)
    feats, grads = features_and_grads(tower, pv, grid, [0, 3])
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads["blocks.3.mlp.down_proj.weight"].abs().sum() > 0
    assert grads["patch_embed.proj.weight"].abs().sum() > 0
    assert not any(name.startswith(("blocks.4.", "blocks.7.", "merger.")) for name in grads)


def test_gradient_checkpointing_gives_same_features_and_grads(processor, images):
    pv, grid = encode(processor, images)
    plain = make_tower().train()
    ref_feats, ref_grads = features_and_grads(plain, pv, grid, [0, 3])
    ckpt = make_tower().train()
    enable = getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable
    enable()
    feats, grads = features_and_grads(ckpt, pv, grid, [0, 3])
    for ref_layer, layer in zip(ref_feats, feats):
        for r, f in zip(ref_layer, layer):
            torch.testing.assert_close(f, r)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)


class _CallCheckpointedBlock(Qwen2_5_VLVisionBlock):
    """Older transformers (5.17) checkpoint `Module.__call__`, so block hooks run inside the checkpoint
    and fire again on the backward replay. Reproduced here by checkpointing `__call__` directly."""

    reentrant = False

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super().__call__(*args, **kwargs)
        return checkpoint(partial(nn.Module.__call__, self, **kwargs), *args, use_reentrant=self.reentrant)


def call_checkpointed_tower(reentrant):
    tower = make_tower().train()
    for blk in tower.blocks:
        blk.__class__ = type("Block", (_CallCheckpointedBlock,), {"reentrant": reentrant})
    return tower


def test_hooks_inside_nonreentrant_checkpoint(processor, images):
    pv, grid = encode(processor, images)
    ref_feats, ref_grads = features_and_grads(make_tower().train(), pv, grid, [0, 3])
    tower = call_checkpointed_tower(reentrant=False)
    fired = []
    tower.blocks[0].register_forward_hook(lambda m, a, o: fired.append(1))
    # Without early stop the replay runs each block to its end, hooks included.
    with set_checkpoint_early_stop(False):
        feats, grads = features_and_grads(tower, pv, grid, [0, 3])
    assert len(fired) == 2, "the replay must have run the block hooks again"
    for ref_layer, layer in zip(ref_feats, feats):
        for r, f in zip(ref_layer, layer):
            torch.testing.assert_close(f, r)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)


def test_hooks_inside_reentrant_checkpoint_fail_clearly(processor, images):
    tower = call_checkpointed_tower(reentrant=True)
    tap = ViTFeatureTap(tower, [0])
    try:
        with pytest.raises(RuntimeError, match="use_reentrant"):
            tower(*encode(processor, images))
        with torch.no_grad():
            tower(*encode(processor, images))
        assert len(tap.grids()[0]) == 2
    finally:
        tap.remove()


def test_tap_on_peft_wrapped_tower(processor, images):
    pv, grid = encode(processor, images)
    base = make_tower()
    with torch.no_grad():
        ref = ViTFeatureTap(base, [0, 3])
        base(pv, grid_thw=grid)
        ref_grids = ref.grids()
        ref.remove()

    tower = make_tower()
    tap_before = ViTFeatureTap(tower, [0, 3])
    wrapped = get_peft_model(tower, LoraConfig(r=4, lora_alpha=8, target_modules=["blocks.0.attn.qkv"]))
    tap_after = ViTFeatureTap(wrapped, [0, 3])
    try:
        assert tap_after.tower is tower
        with torch.no_grad():
            wrapped(pv, grid_thw=grid)
        for tap in (tap_before, tap_after):
            for ref_layer, layer in zip(ref_grids, tap.grids()):
                for r, g in zip(ref_layer, layer):
                    torch.testing.assert_close(g, r, rtol=0, atol=0)

        lora_b = tower.blocks[0].attn.qkv.lora_B["default"].weight
        with torch.no_grad():
            lora_b.normal_(std=0.5)
        wrapped(pv, grid_thw=grid)
        grids = tap_after.grids()
        assert not torch.allclose(grids[0][1], ref_grids[0][1])
        sum(g.square().sum() for g in grids[0]).backward()
        assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
        assert tower.blocks[0].attn.qkv.lora_A["default"].weight.grad.abs().sum() > 0
    finally:
        tap_before.remove()
        tap_after.remove()


def test_tap_inside_full_model_forward(processor, images):
    """The full model calls the tower with grid_thw as a keyword; grids equal a tower-only forward."""
    config = Qwen2_5_VLConfig(
        vision_config=VISION,
        text_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=1000,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        image_token_id=900,
        video_token_id=901,
        vision_start_token_id=902,
        vision_end_token_id=903,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    pv, grid = encode(processor, images)
    n_tokens = [int(t * h * w) // 4 for t, h, w in grid.tolist()]
    width = max(n_tokens)
    input_ids = torch.tensor([[5, 902] + [900] * n + [903, 7] + [0] * (width - n) for n in n_tokens])
    tap = ViTFeatureTap(model.model.visual, [0, 7])
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), pixel_values=pv, image_grid_thw=grid)
            from_model = tap.grids()
            model.model.visual(pv, grid_thw=grid)
            from_tower = tap.grids()
    finally:
        tap.remove()
    for layer_model, layer_tower in zip(from_model, from_tower):
        assert [g.shape[1:] for g in layer_model] == [(16, 16), (12, 20)]
        for a, b in zip(layer_model, layer_tower):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
