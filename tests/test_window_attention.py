"""The fast paths (batched window attention, precomputed vision inputs, fused kernels) give the plain
transformers path's outputs and LoRA gradients, on letterboxed and on mixed-size batches."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import inject_adapter_in_model
from PIL import Image
from transformers import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from qwen_forensics.demo.tiny import TEXT_DIMS, VISION_DIMS, build_tiny_model
from qwen_forensics.model.fast import window_attention
from qwen_forensics.model.fast import enable_fast_paths, expected_counts, plan_attention, switch
from qwen_forensics.model.loader import load_model
from qwen_forensics.model.lora import make_lora_config
from qwen_forensics.model.lora_targets import vision_block_targets

REPO = Path(__file__).resolve().parents[1]


def make_tower(**dims):
    torch.manual_seed(0)
    config = Qwen2_5_VLVisionConfig(**{**VISION_DIMS, **dims}, out_hidden_size=TEXT_DIMS["hidden_size"])
    config._attn_implementation = "sdpa"
    return Qwen2_5_VisionTransformerPretrainedModel(config).eval()


def _pixels(sizes):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=448 * 448)
    out = processor(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


# 224x224 (4 full windows of 8x8 patches) and 168x280 (12x20 patches: edge windows of 8x4 and 4x8),
# so window lengths differ within and across images; and two letterboxed 224x224 images.
MIXED = [(224, 224), (168, 280)]
LETTERBOXED = [(224, 224), (224, 224)]


@pytest.mark.parametrize("sizes", [MIXED, LETTERBOXED], ids=["mixed", "letterboxed"])
def test_outputs_match_transformers(sizes):
    pixels, grid = _pixels(sizes)
    reference = make_tower()
    fast = copy.deepcopy(reference)
    counts = enable_fast_paths(fast).counts
    assert counts["attention"] == VISION_DIMS["depth"] and counts["vision_inputs"] == 1
    assert counts["rms_norm"] == 2 * VISION_DIMS["depth"] + 1 and counts["mlp"] == VISION_DIMS["depth"]
    assert counts["patch_embed"] == 1
    with torch.no_grad():
        want = reference(pixels, grid_thw=grid)
        got = fast(pixels, grid_thw=grid)
        again = fast(pixels, grid_thw=grid)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again.pooler_output, got.pooler_output, rtol=0, atol=0)


def test_letterboxed_batches_attend_through_views_and_plan_once(monkeypatch):
    """Equal windows need no gather; the plans are built once per grid, never per block."""
    pixels, grid = _pixels(LETTERBOXED)
    fast = make_tower()
    enable_fast_paths(fast)
    calls = []
    real = window_attention.plan_attention
    monkeypatch.setattr(window_attention, "plan_attention", lambda *a: calls.append(a) or real(*a))
    with torch.no_grad():
        fast(pixels, grid_thw=grid)
        assert len(calls) == 2, "one plan for the windows, one for the full-attention blocks"
        fast(pixels, grid_thw=grid)
    assert len(calls) == 2
    plans = [real(bounds, torch.device("cpu")) for bounds, _ in calls]
    assert sorted(p.uniform for p in plans) == [64, 256] and all(not p.groups for p in plans)
    ragged = plan_attention([0, 64, 96, 160], torch.device("cpu"))
    assert ragged.uniform is None and [length for length, _ in ragged.groups] == [64, 32]


@pytest.mark.parametrize("sizes", [MIXED, LETTERBOXED], ids=["mixed", "letterboxed"])
def test_lora_gradients_match_transformers(sizes):
    pixels, grid = _pixels(sizes)
    towers = []
    for fast in (False, True):
        tower = make_tower()
        tower.requires_grad_(False)
        inject_adapter_in_model(make_lora_config(vision_block_targets(tower, [0, 7]), r=4, alpha=8, dropout=0.0), tower)
        for name, p in tower.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
        if fast:
            enable_fast_paths(tower)
        tower(pixels, grid_thw=grid).pooler_output.square().sum().backward()
        towers.append({n: p.grad for n, p in tower.named_parameters() if p.requires_grad})
    assert towers[0].keys() == towers[1].keys() and towers[0]
    for name in towers[0]:
        assert towers[0][name].abs().sum() > 0, name
        torch.testing.assert_close(towers[1][name], towers[0][name], rtol=1e-4, atol=1e-6)


def test_misaligned_mlp_weights_are_packed_and_give_the_same_outputs_and_lora_gradients():
    """A 60-wide intermediate (like the 7B's 3420, not a multiple of 8) is re-homed into padded storage:
    gate and up in one GEMM, state dict unchanged, outputs and LoRA gradients as before."""
    pixels, grid = _pixels(LETTERBOXED)
    runs = []
    for fast in (False, True):
        tower = make_tower(intermediate_size=60)
        tower.requires_grad_(False)
        inject_adapter_in_model(make_lora_config(vision_block_targets(tower, [0, 7]), r=4, alpha=8, dropout=0.0), tower)
        for name, p in tower.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
        shapes = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
        if fast:
            enable_fast_paths(tower)
        out = tower(pixels, grid_thw=grid).pooler_output
        out.square().sum().backward()
        runs.append((out.detach(), {n: p.grad for n, p in tower.named_parameters() if p.requires_grad}, tower))
        assert {k: tuple(v.shape) for k, v in tower.state_dict().items()} == shapes
    (want, want_grads, _), (got, got_grads, fast_tower) = runs
    packed = [block.mlp.__dict__.get("_packed_mlp") for block in fast_tower.blocks]
    assert all(p is not None and (p.inner, p.width) == (60, 64) for p in packed)
    assert fast_tower.blocks[3].mlp.down_proj.weight.stride() == (64, 1), "down's rows are 16-byte aligned"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6)


def test_non_sdpa_towers_keep_their_attention():
    tower = make_tower()
    tower.config._attn_implementation = "eager"
    assert enable_fast_paths(tower).counts["attention"] == 0


def test_full_model_logits_match_transformers(tmp_path):
    folder = build_tiny_model(tmp_path / "tiny")
    plain, fast = load_model(folder, dtype="float32", fast_paths=False), load_model(folder, dtype="float32")
    attention = type(plain.model.visual.blocks[0].attn)
    assert plain.model.visual.blocks[0].attn.forward.__func__ is attention.forward
    assert fast.model.visual.blocks[0].attn.forward.__func__ is window_attention.attention_forward
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    pixels, grid = _pixels([(112, 112)])
    with torch.no_grad():
        lm_only = [m(input_ids=input_ids).logits for m in (plain, fast)]
    torch.testing.assert_close(lm_only[1], lm_only[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        towers = [m.model.visual(pixels, grid_thw=grid).pooler_output for m in (plain, fast)]
    torch.testing.assert_close(towers[1], towers[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- the switch and its guards
def test_the_handle_undoes_every_patch(tiny_model_dir):
    """``model.fast_paths.undo()`` leaves plain transformers: no instance forward, no hook, the MLP weights in
    their own storage, and logits bit for bit those of a model loaded without the fast paths."""
    plain = load_model(tiny_model_dir, dtype="float32", fast_paths=False)
    fast = load_model(tiny_model_dir, dtype="float32")
    assert fast.fast_paths.counts == expected_counts(fast, "sdpa")
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    pixels, grid = _pixels([(112, 112)])
    with torch.no_grad():
        fast.model.visual(pixels, grid_thw=grid)  # packs the MLP weights, fills the tower's caches
    fast.fast_paths.undo()
    assert not any("forward" in m.__dict__ for m in fast.modules())
    assert not fast.model.visual._forward_pre_hooks and not hasattr(fast.model.visual, "_fast_inputs")
    assert not any("_packed_mlp" in m.__dict__ for m in fast.modules())
    assert all(fast.fast_paths.counts[k] == 0 for k in fast.fast_paths.counts)
    with torch.no_grad():
        for run in (lambda m: m(input_ids=input_ids).logits, lambda m: m.model.visual(pixels, grid_thw=grid).pooler_output):
            torch.testing.assert_close(run(fast), run(plain), rtol=0, atol=0)


def test_a_renamed_module_fails_loudly_naming_it(tiny_model_dir, monkeypatch):
    """A transformers release that renames a patched class must not silently run the slow path."""
    monkeypatch.setitem(switch.PATCHES, "rms_norm", ("Qwen3_VLRMSNorm",))
    with pytest.raises(RuntimeError, match=r"rms_norm: 0 of 70 expected \(Qwen3_VLRMSNorm\).*fast_paths: false"):
        load_model(tiny_model_dir, dtype="float32")
    assert load_model(tiny_model_dir, dtype="float32", fast_paths=False) is not None


def test_an_untested_release_runs_plain_transformers_and_says_so(tiny_model_dir, monkeypatch, capsys):
    real = switch.version
    monkeypatch.setattr(switch, "version", lambda name: "5.99.0" if name == "transformers" else real(name))
    switch._say_untested.cache_clear()
    model = load_model(tiny_model_dir, dtype="float32")
    assert not model.fast_paths.enabled and not any("forward" in m.__dict__ for m in model.modules())
    assert capsys.readouterr().err.count("fast paths off: transformers 5.99.0 (tested 5.17 to") == 1


# The fused kernels themselves, run by Triton's interpreter on the CPU (a fresh process: the
# interpreter is chosen when the kernels are defined). Its bf16 conversion truncates where the GPU
# rounds to nearest, so bf16 results may differ from eager by one bf16 step; fp32 agrees to fp32 order.
KERNEL_CHECK = r"""
import torch
from qwen_forensics.model.fast import fused_ops as fo
torch.manual_seed(0)
# Otherwise use_kernel=True would quietly run the eager path and compare it with itself.
assert fo.kernels_available(torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)), "Triton interpreter unavailable"
worst = {}
def check(name, got, want, dtype):
    for a, b in zip(got, want):
        scale = b.float().abs().max().clamp(min=1)
        worst[(name, str(dtype))] = max(worst.get((name, str(dtype)), 0), ((a.float() - b.float()).abs().max() / scale).item())
for dtype in (torch.float32, torch.bfloat16):
    n, heads, d = 37, 3, 80
    qkv = torch.randn(n, 3 * heads * d, dtype=dtype, requires_grad=True)
    cos, sin = torch.randn(n, d), torch.randn(n, d)
    outs = [fo.rotary_split(qkv, cos, sin, heads, use_kernel=k) for k in (True, False)]
    assert all(t.is_contiguous() for t in outs[0])
    check("rotary", outs[0], outs[1], dtype)
    grads = [torch.randn_like(t) for t in outs[1]]
    check("rotary_grad", torch.autograd.grad(outs[0], qkv, grads), torch.autograd.grad(outs[1], qkv, grads), dtype)
    x = torch.randn(5, 7, 1280, dtype=dtype, requires_grad=True)
    w = (torch.randn(1280) * 0.5 + 1).to(dtype)
    ys = [fo.rms_norm(x, w, 1e-6, use_kernel=k) for k in (True, False)]
    check("rms_norm", ys[:1], ys[1:], dtype)
    g = torch.randn_like(ys[1])
    check("rms_norm_grad", torch.autograd.grad(ys[0], x, g), torch.autograd.grad(ys[1], x, g), dtype)
    a = torch.randn(13, 3420, dtype=dtype, requires_grad=True)
    b = torch.randn(13, 3420, dtype=dtype, requires_grad=True)
    outs = [fo.silu_mul(a, b, use_kernel=k) for k in (True, False)]
    check("silu_mul", outs[:1], outs[1:], dtype)
    g = torch.randn_like(outs[1])
    check("silu_mul_grad", torch.autograd.grad(outs[0], (a, b), g), torch.autograd.grad(outs[1], (a, b), g), dtype)
for (name, dtype), err in sorted(worst.items()):
    limit = 1e-6 if dtype == "torch.float32" else 1e-2
    assert err <= limit, (name, dtype, err)
    print(name, dtype, f"{err:.1e}")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels themselves are checked (CUDA tests below)")
def test_fused_kernels_match_eager_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\n") == 12, done.stdout


# Without autograd rotary_split's kernel writes only q and k and hands back v as a view of qkv.
ROTARY_INFERENCE_CHECK = r"""
import torch
from qwen_forensics.model.fast import fused_ops as fo
torch.manual_seed(0)
assert fo.kernels_available(torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)), "Triton interpreter unavailable"
def same_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
for dtype in (torch.float32, torch.bfloat16):
    limit = 1e-6 if dtype == torch.float32 else 1e-2
    for n, heads, d in ((37, 3, 80), (6, 2, 16)):          # N not a multiple of the kernel's 4 rows
        c = heads * d
        qkv = torch.randn(n, 3 * c, dtype=dtype, requires_grad=True)
        cos, sin = torch.randn(n, d), torch.randn(n, d)
        v_slice = qkv.detach().view(n, 3, heads, d)[:, 2]
        train = fo.rotary_split(qkv, cos, sin, heads, use_kernel=True)
        assert train[0].grad_fn is not None and all(t.is_contiguous() for t in train)
        assert not same_storage(train[2], qkv) and torch.equal(train[2], v_slice), "training v is a copy"
        eager = fo.rotary_split(qkv, cos, sin, heads, use_kernel=False)
        assert same_storage(eager[2], qkv) and eager[2].stride() == (3 * c, d, 1), "eager v is a view"
        frozen = qkv.detach().clone()                      # grad mode on, but nothing requires grad
        with torch.no_grad():
            runs = [fo.rotary_split(qkv, cos, sin, heads, use_kernel=True), fo.rotary_split(frozen, cos, sin, heads, use_kernel=True)]
        with torch.inference_mode():
            runs.append(fo.rotary_split(qkv, cos, sin, heads, use_kernel=True))
        runs.append(fo.rotary_split(frozen, cos, sin, heads, use_kernel=True))
        for source, (q, k, v) in zip((qkv, frozen, qkv, frozen), runs):
            assert q.grad_fn is None and q.is_contiguous() and k.is_contiguous()
            assert q.shape == k.shape == v.shape == (n, heads, d)
            assert torch.equal(q, train[0]) and torch.equal(k, train[1]), "same arithmetic as the training kernel"
            for a, b in ((q, eager[0]), (k, eager[1])):
                err = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1)).item()
                assert err <= limit, (dtype, n, err)
            assert v._base is source and same_storage(v, source), "v is a view of qkv"
            assert v.stride() == (3 * c, d, 1) and v.data_ptr() == source.data_ptr() + 2 * c * source.element_size()
            assert torch.equal(v, v_slice)
        print(dtype, n, "ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels themselves are checked (CUDA tests below)")
def test_rotary_kernel_without_autograd_leaves_v_in_qkv_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", ROTARY_INFERENCE_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok\n") == 4, done.stdout


# The LM's rotary kernel: transformers' apply_rotary_pos_emb on the same views, and a whole tiny
# model's scoring forward with the kernel in every decoder layer against the plain model.
LM_ROTARY_CHECK = r"""
import sys
import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb
from qwen_forensics.model.fast import fused_ops as fo
from qwen_forensics.model.loader import load_model
torch.manual_seed(0)
assert fo.kernels_available(torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)), "Triton interpreter unavailable"
for dtype in (torch.float32, torch.bfloat16):
    b, s, d = 3, 37, 128
    q, k = torch.randn(b, s, 28, d, dtype=dtype), torch.randn(b, s, 4, d, dtype=dtype)
    cos, sin = torch.randn(b, s, d, dtype=dtype), torch.randn(b, s, d, dtype=dtype)
    got = fo.rotary_lm(q, k, cos, sin, use_kernel=True)
    want = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    for a, w in zip(got, want):
        assert a.shape == w.shape and a.stride() == w.stride(), (a.stride(), w.stride())
        assert torch.equal(a, w), (a.float() - w.float()).abs().max()
    qg = q.clone().requires_grad_()
    assert fo.rotary_lm(qg, k, cos, sin, use_kernel=True)[0].grad_fn is not None, "autograd takes the eager formula"
    print(dtype, "ok")
plain = load_model(sys.argv[1], dtype="float32", fast_paths=False)
fast = load_model(sys.argv[1], dtype="float32")
calls = []
launch = fo._rotary_lm_launch
fo._rotary_lm_launch = lambda *a: calls.append(1) or launch(*a)
ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]])
mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
with torch.no_grad():
    logits = [m(input_ids=ids, attention_mask=mask, use_cache=False).logits for m in (plain, fast)]
layers = plain.config.text_config.num_hidden_layers
assert len(calls) == 2 * layers, (len(calls), layers)
torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
with torch.no_grad():
    cached = fast(input_ids=ids, attention_mask=mask, use_cache=True)
assert len(calls) == 2 * layers, "a forward with a cache runs transformers' own attention"
torch.testing.assert_close(cached.logits, logits[0], rtol=1e-5, atol=1e-5)
print("model ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels themselves are checked (CUDA tests below)")
def test_lm_rotary_kernel_matches_transformers_in_the_interpreter(tiny_model_dir):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", LM_ROTARY_CHECK, str(tiny_model_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok\n") == 3, done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels run on CUDA (the device check)")
def test_cuda_lm_rotary_is_bit_exact_and_the_scoring_forward_matches(tiny_model_dir):
    """bf16 at the 7B LM's head layout (28 query heads, 4 key heads, head_dim 128): bit for bit."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    from qwen_forensics.model.fast.fused_ops import rotary_lm
    g = torch.Generator(device="cuda").manual_seed(0)
    b, s, d = 4, 301, 128
    q, k = (torch.randn(b, s, h, d, device="cuda", generator=g).bfloat16() for h in (28, 4))
    cos, sin = (torch.randn(b, s, d, device="cuda", generator=g).bfloat16() for _ in range(2))
    got = rotary_lm(q, k, cos, sin)
    want = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    for a, w in zip(got, want):
        assert a.stride() == w.stride() and torch.equal(a, w)
    plain = load_model(tiny_model_dir, dtype="bfloat16", fast_paths=False).cuda()
    fast = load_model(tiny_model_dir, dtype="bfloat16").cuda()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]], device="cuda")
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], device="cuda")
    with torch.no_grad():
        logits = [m(input_ids=ids, attention_mask=mask, use_cache=False).logits.float() for m in (plain, fast)]
    assert (logits[1] - logits[0]).norm() / logits[0].norm() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels run on CUDA (the device check)")
@pytest.mark.parametrize("sizes", [MIXED, LETTERBOXED], ids=["mixed", "letterboxed"])
@pytest.mark.parametrize("inner", [64, 60], ids=["aligned_mlp", "packed_mlp"])
def test_cuda_bf16_fast_paths_match_transformers(sizes, inner):
    """On the GPU the kernels run for real: bf16 tower outputs and LoRA gradients against transformers'."""
    pixels, grid = _pixels(sizes)
    results = []
    for fast in (False, True):
        tower = make_tower(intermediate_size=inner).to("cuda", torch.bfloat16)
        tower.requires_grad_(False)
        inject_adapter_in_model(make_lora_config(vision_block_targets(tower, [0, 7]), r=4, alpha=8, dropout=0.0), tower)
        for name, p in tower.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator(device="cuda").manual_seed(1))
        if fast:
            assert enable_fast_paths(tower).counts["attention"] == VISION_DIMS["depth"]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = tower(pixels.cuda(), grid_thw=grid.cuda()).pooler_output
        out.float().square().sum().backward()
        results.append((out.float(), {n: p.grad.float() for n, p in tower.named_parameters() if p.requires_grad}))
    (want, want_grads), (got, got_grads) = results
    assert (got - want).norm() / want.norm() < 2e-2
    for name in want_grads:
        assert (got_grads[name] - want_grads[name]).norm() / want_grads[name].norm() < 5e-2, name
