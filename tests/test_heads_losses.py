"""Forensic heads (shapes, config round trip, conv equivariance, gradients) and the joint loss
(values pinned on a hand-made batch, contrast sign, single-class batches)."""

import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLVisionConfig

from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.training.losses import ForensicLossWeights, forensic_loss, mask_to_grid, soft_dice

SMALL = dict(fuse_dim=16, cls_hidden=8, evi_hidden=8)


def make_heads(in_dims=(32, 32, 32), seed=0, **kwargs):
    torch.manual_seed(seed)
    return ForensicHeads(list(in_dims), **{**SMALL, **kwargs})


def features(batch, dims, h, w, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d, h, w, generator=gen) for d in dims]


def test_output_shapes_with_mixed_layer_widths():
    heads = make_heads(in_dims=(8, 24))
    out = heads(features(3, (8, 24), 6, 5))
    assert out["cls_logit"].shape == (3,)
    assert out["heatmap_logit"].shape == (3, 6, 5)
    assert out["pooled"].shape == (3, 16)


def test_from_vision_config_reads_dimensions():
    vision = Qwen2_5_VLVisionConfig(depth=8, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64)
    heads = ForensicHeads.from_vision_config(vision, [0, 3, 7], fuse_dim=16, cls_hidden=8, evi_hidden=8)
    assert heads.in_dims == [32, 32, 32]
    assert heads.config["in_dims"] == [32, 32, 32] and heads.config["fuse_dim"] == 16
    with pytest.raises(ValueError, match="out of range"):
        ForensicHeads.from_vision_config(vision, [0, 8])


def test_config_round_trip_reproduces_outputs():
    heads = make_heads().eval()
    clone = ForensicHeads.from_config(json.loads(json.dumps(heads.config)))
    clone.load_state_dict(heads.state_dict(), strict=True)
    clone.eval()
    feats = features(2, (32, 32, 32), 4, 4)
    with torch.no_grad():
        a, b = heads(feats), clone(feats)
    for key in ("cls_logit", "heatmap_logit", "pooled"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_heatmap_follows_a_spatial_shift():
    heads = make_heads(in_dims=(32, 32)).eval()
    feats = features(1, (32, 32), 12, 12)
    shifted = []
    for x in feats:
        s = torch.zeros_like(x)
        s[..., 2:, 3:] = x[..., :-2, :-3]
        shifted.append(s)
    with torch.no_grad():
        h = heads(feats)["heatmap_logit"]
        hs = heads(shifted)["heatmap_logit"]
    # Two 3x3 convs see 2 cells around each cell: compare cells clear of borders and of the zero fill.
    torch.testing.assert_close(hs[:, 4:10, 5:10], h[:, 2:8, 2:7], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hs, h)


def test_every_head_parameter_gets_a_gradient():
    heads = make_heads().train()
    feats = features(4, (32, 32, 32), 8, 8)
    mask = torch.zeros(4, 112, 112)
    mask[0, :40, :60] = 1.0
    mask[1, 50:, 20:90] = 1.0
    labels = torch.tensor([1, 1, 0, 0])
    out = heads(feats)
    weights = ForensicLossWeights(lambda_sparse=0.1, lambda_contrast=0.1)
    forensic_loss(out["cls_logit"], out["heatmap_logit"], mask, labels, weights)["total"].backward()
    for name, param in heads.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_half_precision_features_are_accepted():
    heads = make_heads(in_dims=(32,))
    out = heads([f.to(torch.bfloat16) for f in features(2, (32,), 4, 4)])
    assert out["cls_logit"].dtype == torch.float32


def test_bad_feature_maps_fail_clearly():
    heads = make_heads(in_dims=(32, 32))
    with pytest.raises(ValueError, match="2 tapped layers"):
        heads(features(2, (32,), 4, 4))
    with pytest.raises(ValueError, match=r"\[B, 32, H, W\]"):
        heads(features(2, (32, 16), 4, 4))
    with pytest.raises(ValueError, match="disagree"):
        heads([features(2, (32,), 4, 4)[0], features(2, (32,), 4, 5)[0]])
    with pytest.raises(ValueError, match="one positive channel count"):
        ForensicHeads([])


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(x, t):
    return -(t * np.log(_np_sigmoid(x)) + (1 - t) * np.log(1 - _np_sigmoid(x)))


def hand_batch():
    cls_logit = torch.tensor([2.0, -1.0])
    heatmap = torch.tensor([[[2.0, -1.0], [0.0, 1.0]], [[-2.0, 0.5], [-1.0, -3.0]]])
    mask = torch.zeros(2, 4, 4)
    mask[0, 0:2, 0:2] = 1.0  # top-left patch fully covered
    mask[0, 1, 3] = 1.0  # one pixel of four in the top-right patch
    labels = torch.tensor([1, 0])
    return cls_logit, heatmap, mask, labels


def test_loss_values_on_hand_made_batch():
    cls_logit, heatmap, mask, labels = hand_batch()
    weights = ForensicLossWeights(
        lambda_cls=1.0, lambda_evi=2.0, lambda_sparse=0.3, lambda_contrast=0.7, evi_alpha=0.25
    )
    got = forensic_loss(cls_logit, heatmap, mask, labels, weights)

    hf, hr = heatmap[0].numpy().astype(np.float64), heatmap[1].numpy().astype(np.float64)
    tf = np.array([[1.0, 0.25], [0.0, 0.0]])
    cls = _np_bce(np.array([2.0, -1.0]), np.array([1.0, 0.0])).mean()
    evi_bce = np.concatenate([_np_bce(hf, tf).ravel(), _np_bce(hr, 0.0).ravel()]).mean()
    pf = _np_sigmoid(hf)
    dice = 1 - (2 * (pf * tf).sum() + 1) / (pf.sum() + tf.sum() + 1)
    sparse = np.concatenate([pf.ravel(), _np_sigmoid(hr).ravel()]).mean()
    contrast = _np_sigmoid(hr).mean() - pf.mean()
    evi = 0.25 * evi_bce + 0.75 * dice
    total = cls + 2.0 * evi + 0.3 * sparse + 0.7 * contrast
    expected = dict(cls=cls, evi_bce=evi_bce, evi_dice=dice, evi=evi, sparse=sparse, contrast=contrast, total=total)
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5), key
    assert got["total"].item() == pytest.approx(0.93944386, rel=1e-6)
    assert got["contrast"].item() == pytest.approx(-0.33069188, rel=1e-6)


def test_mask_to_grid_is_patch_coverage():
    _, _, mask, _ = hand_batch()
    grid = mask_to_grid(mask, (2, 2))
    assert grid.tolist() == [[[1.0, 0.25], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    with pytest.raises(ValueError, match="multiple of the heatmap grid"):
        mask_to_grid(torch.zeros(1, 10, 10), (3, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        mask_to_grid(torch.zeros(10, 10), (2, 2))


def test_contrast_sign():
    weights = ForensicLossWeights()
    mask = torch.zeros(2, 4, 4)
    labels = torch.tensor([1, 0])
    low, high = torch.full((2, 2), -3.0), torch.full((2, 2), 3.0)
    reals_hot = forensic_loss(torch.zeros(2), torch.stack([low, high]), mask, labels, weights)["contrast"]
    fakes_hot = forensic_loss(torch.zeros(2), torch.stack([high, low]), mask, labels, weights)["contrast"]
    assert reals_hot.item() == pytest.approx(_np_sigmoid(3.0) - _np_sigmoid(-3.0), rel=1e-6)
    assert fakes_hot.item() == pytest.approx(-reals_hot.item(), rel=1e-6)


def test_all_real_batch():
    weights = ForensicLossWeights(lambda_sparse=0.5, lambda_contrast=1.0)
    heatmap = torch.tensor([[[0.3, -0.2], [1.0, -1.0]], [[0.0, 0.0], [2.0, -2.0]]], requires_grad=True)
    cls_logit = torch.tensor([-1.0, 0.5], requires_grad=True)
    got = forensic_loss(cls_logit, heatmap, torch.zeros(2, 8, 8), torch.tensor([0, 0]), weights)
    assert got["contrast"].item() == 0.0 and got["evi_dice"].item() == 0.0
    h = heatmap.detach().numpy().astype(np.float64)
    cls = _np_bce(np.array([-1.0, 0.5]), 0.0).mean()
    expected = cls + 0.5 * _np_bce(h, 0.0).mean() + 0.5 * _np_sigmoid(h).mean()
    assert got["total"].item() == pytest.approx(expected, rel=1e-5)
    got["total"].backward()
    assert heatmap.grad.abs().sum() > 0 and cls_logit.grad.abs().sum() > 0


def test_all_fake_batch_and_empty_fake_mask():
    weights = ForensicLossWeights()
    heatmap = torch.tensor([[[2.0, -1.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    mask = torch.zeros(2, 4, 4)
    mask[0, :2, :2] = 1.0
    got = forensic_loss(torch.zeros(2), heatmap, mask, torch.tensor([1, 1]), weights)
    assert got["contrast"].item() == 0.0
    # The second fake's mask is empty: it stays out of Dice.
    only_first = soft_dice(torch.sigmoid(heatmap[:1]), mask_to_grid(mask[:1], (2, 2)))
    assert got["evi_dice"].item() == pytest.approx(only_first.item(), rel=1e-6)


def test_evi_alpha_extremes_and_validation():
    cls_logit, heatmap, mask, labels = hand_batch()
    bce_only = forensic_loss(cls_logit, heatmap, mask, labels, ForensicLossWeights(evi_alpha=1.0))
    dice_only = forensic_loss(cls_logit, heatmap, mask, labels, ForensicLossWeights(evi_alpha=0.0))
    assert bce_only["evi"].item() == pytest.approx(bce_only["evi_bce"].item())
    assert dice_only["evi"].item() == pytest.approx(dice_only["evi_dice"].item())
    with pytest.raises(ValueError, match="evi_alpha"):
        ForensicLossWeights(evi_alpha=1.5)
    with pytest.raises(ValueError, match="lambda_sparse"):
        ForensicLossWeights(lambda_sparse=-1.0)
    with pytest.raises(ValueError, match="labels"):
        forensic_loss(cls_logit, heatmap, mask, torch.tensor([1, 0, 1]), ForensicLossWeights())


def _old_forensic_loss(cls_logit, heatmap_logit, target_mask, labels, weights):
    """The loss as it was with boolean indexing and Python branches (host syncs), for comparison."""
    labels = labels.float()
    target = mask_to_grid(target_mask, tuple(heatmap_logit.shape[1:]))
    loss_cls = torch.nn.functional.binary_cross_entropy_with_logits(cls_logit, labels)
    evi_bce = torch.nn.functional.binary_cross_entropy_with_logits(heatmap_logit, target)
    prob = torch.sigmoid(heatmap_logit)
    has_target = target.flatten(1).sum(1) > 0
    zero = heatmap_logit.sum() * 0.0
    evi_dice = soft_dice(prob[has_target], target[has_target]).mean() if has_target.any() else zero
    evi = weights.evi_alpha * evi_bce + (1.0 - weights.evi_alpha) * evi_dice
    sparse = prob.mean()
    per_image = prob.flatten(1).mean(1)
    fake = labels > 0.5
    if fake.any() and (~fake).any():
        contrast = per_image[~fake].mean() - per_image[fake].mean()
    else:
        contrast = zero
    total = (weights.lambda_cls * loss_cls + weights.lambda_evi * evi + weights.lambda_sparse * sparse
             + weights.lambda_contrast * contrast)
    return dict(cls=loss_cls, evi_bce=evi_bce, evi_dice=evi_dice, evi=evi, sparse=sparse, contrast=contrast,
                total=total)


def _random_batch(gen, batch, kind):
    """kind: 'real' (no fakes, no masks), 'fake' (all fakes), 'no_target' (fakes with empty masks), 'mixed'."""
    cls_logit = torch.randn(batch, generator=gen) * 2
    heatmap = torch.randn(batch, 3, 4, generator=gen) * 2
    if kind == "real":
        labels = torch.zeros(batch, dtype=torch.long)
    elif kind in ("fake", "no_target"):
        labels = torch.ones(batch, dtype=torch.long)
    else:
        labels = torch.randint(0, 2, (batch,), generator=gen)
    mask = (torch.rand(batch, 12, 16, generator=gen) > 0.6).float() * labels.view(-1, 1, 1)
    if kind == "no_target":
        mask.zero_()
    elif kind == "mixed":
        mask[torch.rand(batch, generator=gen) < 0.3] = 0.0  # some fakes whose mask is empty
    return cls_logit, heatmap, mask, labels


@pytest.mark.parametrize("kind", ["real", "fake", "no_target", "mixed"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 6])
def test_loss_matches_boolean_indexing_reference(kind, batch):
    weights = ForensicLossWeights(lambda_cls=0.7, lambda_evi=1.3, lambda_sparse=0.2, lambda_contrast=0.4,
                                  evi_alpha=0.3)
    for seed in range(4):
        cls_logit, heatmap, mask, labels = _random_batch(torch.Generator().manual_seed(seed), batch, kind)
        results = []
        for fn in (forensic_loss, _old_forensic_loss):
            c, h = cls_logit.clone().requires_grad_(), heatmap.clone().requires_grad_()
            out = fn(c, h, mask, labels, weights)
            grads = torch.autograd.grad(out["total"], (c, h))
            results.append((out, grads))
        (new, new_grads), (old, old_grads) = results
        assert new.keys() == old.keys()
        for key in old:
            assert torch.allclose(new[key], old[key], atol=1e-6, rtol=1e-5), (key, seed)
        for g_new, g_old in zip(new_grads, old_grads):
            assert torch.allclose(g_new, g_old, atol=1e-6, rtol=1e-5), seed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are only observable on CUDA")
def test_loss_has_no_host_sync():
    cls_logit, heatmap, mask, labels = (t.cuda() for t in hand_batch())
    heatmap.requires_grad_()
    weights = ForensicLossWeights(lambda_sparse=0.1, lambda_contrast=0.1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        forensic_loss(cls_logit, heatmap, mask, labels, weights)["total"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
