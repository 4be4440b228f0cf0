"""Fast paths for Qwen2.5-VL's blocks: batched window attention, precomputed vision inputs, fused ops.

transformers' vision attention (SDPA) splits the packed sequence at ``cu_seqlens`` and calls
attention once per window in a Python loop: a 448 px image has 16 windows of 64 tokens, so a batch
of 64 images makes about a thousand tiny attention calls per block, and the GPU idles between them
(SPEC 8: the tower ran at ~6% of bf16 peak). Here:

- every window of one length is attended in one SDPA call. Letterboxed images tile the sequence
  with equal windows (and equal images for the full-attention blocks), which is then a plain
  ``view``: no gather, no scatter back. Ragged batches gather each length group;
- the tower's index tensors (rotary positions, window order, ``cu_seqlens``) depend only on the
  images' patch grids. A hook on the tower builds them once per grid and hands them in through the
  keyword arguments transformers' ``vision_utils`` accepts for exactly this, together with each
  block's attention plan, so no block reads ``cu_seqlens`` back to the host (a sync per block);
- rotary embedding, RMSNorm and SiLU-and-multiply run as the fused kernels of ``fused_ops``
  (CUDA, half precision; the eager formula elsewhere), in the vision tower and in the LM (the LM's
  rotary kernel in forwards without autograd, e.g. the evaluations' scoring forward; forwards with a
  KV cache keep transformers' attention);
- the vision MLP's frozen weights live in storage padded to a 16-byte aligned width (3420 -> 3424),
  gate and up as one GEMM: Hopper's fast GEMM kernels need that alignment (see ``_PackedMLP``);
- the patch embedding, a Conv3d whose stride is its kernel, runs as the matrix product it is
  (pixel rows [N, 3*2*14*14] times the flattened kernel): cuDNN's bf16 implicit-GEMM convolution
  took 9 ms of a 204 ms batch of 64 images, the GEMM well under 1 ms.

The arithmetic per window is unchanged, so outputs and gradients match transformers' path up to
floating-point summation order (tested), and LoRA-wrapped ``qkv``/``proj``/MLP modules are called
as usual. The switch that installs these forwards (and can remove them) is ``switch.enable_fast_paths``,
which the loaders call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import vision_utils
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward
from transformers.utils.generic import get_max_seqlen

from qwen_forensics.model.fast.fused_ops import rms_norm, rotary_lm, rotary_split, silu_mul, silu_mul_packed


_CACHE_SIZE = 8
# Hopper's TMA-based GEMM kernels need 16-byte aligned row strides (8 bf16 elements); with the
# vision MLP's 3420-wide intermediate cuBLAS falls back to Ampere kernels at about half the speed.
ALIGN = 8


@dataclass(frozen=True)
class AttentionPlan:
    """How one ``cu_seqlens`` splits the sequence: equal segments (a view) or groups to gather."""
    uniform: int | None                                   # segment length when all are equal
    groups: tuple[tuple[int, torch.Tensor], ...] = ()     # (length, token index) per length otherwise
    inverse: torch.Tensor | None = None


def plan_attention(bounds: list[int], device: torch.device) -> AttentionPlan:
    """The plan for segment boundaries ``bounds`` (host ints, as in ``cu_seqlens``)."""
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    starts = [a for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if lengths and len(set(lengths)) == 1 and bounds[0] == 0:
        return AttentionPlan(lengths[0])
    by_length: dict[int, list[int]] = {}
    for start, length in zip(starts, lengths):
        by_length.setdefault(length, []).append(start)
    groups, order = [], []
    for length, group in by_length.items():
        index = (torch.tensor(group, device=device)[:, None] + torch.arange(length, device=device)).reshape(-1)
        groups.append((length, index))
        order.append(index)
    order = torch.cat(order)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return AttentionPlan(None, tuple(groups), inverse)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """q, k, v [N, H, D] -> attention output [N, H * D], segment by segment."""
    n, heads, dim = q.shape
    if plan.uniform is not None:
        count = n // plan.uniform
        qg, kg, vg = (t.view(count, plan.uniform, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)
        return out.transpose(1, 2).reshape(n, heads * dim)
    pieces = []
    for length, index in plan.groups:
        qg, kg, vg = (t.index_select(0, index).view(-1, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)
        pieces.append(out.transpose(1, 2).reshape(-1, heads * dim))
    return torch.cat(pieces).index_select(0, plan.inverse)


def attention_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                       position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
    cos, sin = position_embeddings
    q, k, v = rotary_split(self.qkv(hidden_states), cos, sin, self.num_heads)
    plan = self._fast_plans.get(id(cu_seqlens), (None, None))
    if plan[0] is not cu_seqlens:
        plan = (cu_seqlens, plan_attention(cu_seqlens.tolist(), q.device))
    return self.proj(_attend(q, k, v, plan[1], self.scaling))


def lm_attention_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          position_ids: torch.Tensor | None = None,
                          position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs):
    """transformers' LM attention, with the rotary embedding through ``rotary_lm`` (a kernel per tensor
    where it applies: CUDA half precision, no autograd, e.g. the evaluations' scoring forward; the
    eager formula otherwise). A forward with a KV cache runs the class's own forward unchanged: the
    cache update's signature differs between transformers releases.
    """
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None or position_embeddings is None:
        return type(self).forward(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                  position_embeddings=position_embeddings, **kwargs)
    kwargs.pop("cache", None)
    kwargs.pop("past_key_values", None)
    bsz, q_len, _ = hidden_states.shape
    shape = (bsz, q_len, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape)
    k = self.k_proj(hidden_states).view(shape)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    q, k = rotary_lm(q, k, *position_embeddings)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                          scaling=self.scaling, sliding_window=self.sliding_window, position_ids=position_ids,
                          **kwargs)
    return self.o_proj(out.reshape(bsz, q_len, -1).contiguous()), weights


def patch_embed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight
    return F.linear(hidden_states.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.proj.bias)


def patch_embed_is_linear(module: nn.Module) -> bool:
    """A Conv3d whose stride equals its kernel, unpadded: every output is one patch's dot product."""
    conv = getattr(module, "proj", None)
    return (type(conv) is nn.Conv3d and tuple(conv.stride) == tuple(conv.kernel_size) and not any(conv.padding)
            and conv.groups == 1 and tuple(conv.dilation) == (1, 1, 1))


def rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


@dataclass
class _PackedMLP:
    """An MLP's frozen weights re-homed into padded storage: gate and up stacked as one [2 * width, C]
    matrix (zero rows beyond each ``inner``), down as [C, width] (zero columns). The modules' own
    weights become views of it, so nothing is stored twice and the state dict is unchanged; the
    zero padding contributes exact zeros, so the products equal the unpadded ones."""
    inner: int
    width: int
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor


def _base(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def _lora_delta(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What a PEFT LoRA layer adds to its base output (None for a plain Linear), computed as PEFT does."""
    if not hasattr(module, "lora_A"):
        return None
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        xa = module._cast_input_dtype(x, lora_a.weight.dtype)
        term = lora_b(lora_a(module.lora_dropout[name](xa))) * module.scaling[name]
        delta = term if delta is None else delta + term
    return delta


def _plain_lora(module: nn.Module) -> bool:
    """A plain Linear, or a vanilla LoRA layer (not merged, enabled, no DoRA or other variant)."""
    if not hasattr(module, "lora_A"):
        return isinstance(module, nn.Linear)
    return (not module.merged and not module.disable_adapters and isinstance(module.base_layer, nn.Linear)
            and not any(module.use_dora.get(a, False) for a in module.active_adapters)
            and not getattr(module, "lora_variant", {}))


def _pack(mlp: nn.Module) -> _PackedMLP | None:
    gate, up, down = _base(mlp.gate_proj), _base(mlp.up_proj), _base(mlp.down_proj)
    inner = gate.out_features
    width = -(-inner // ALIGN) * ALIGN
    weights = [gate.weight, up.weight, down.weight] + [b for b in (gate.bias, up.bias) if b is not None]
    if width == inner or any(w.requires_grad for w in weights) or (gate.bias is None) != (up.bias is None):
        return None
    c = gate.in_features
    with torch.no_grad():
        gate_up = gate.weight.new_zeros(2 * width, c)
        gate_up[:inner], gate_up[width:width + inner] = gate.weight, up.weight
        down_w = down.weight.new_zeros(down.out_features, width)
        down_w[:, :inner] = down.weight
        bias = None
        if gate.bias is not None:
            bias = gate.bias.new_zeros(2 * width)
            bias[:inner], bias[width:width + inner] = gate.bias, up.bias
            gate.bias.data, up.bias.data = bias[:inner], bias[width:width + inner]
        gate.weight.data, up.weight.data = gate_up[:inner], gate_up[width:width + inner]
        down.weight.data = down_w[:, :inner]
    return _PackedMLP(inner, width, gate_up, bias, down_w)


def _packed(mlp: nn.Module) -> _PackedMLP | None:
    """The MLP's packed weights, (re)built when the weights moved (``.to(device)``) or were replaced.

    An MLP that cannot be packed is remembered with its weights' storage and trainability, so the
    check is not redone at every forward; once either changes it is tried again."""
    if not all(_plain_lora(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
        return None
    gate, down = _base(mlp.gate_proj), _base(mlp.down_proj)
    packed = mlp.__dict__.get("_packed_mlp")
    if packed is not None and gate.weight.data_ptr() == packed.gate_up.data_ptr() \
            and down.weight.data_ptr() == packed.down.data_ptr():
        return packed
    state = (gate.weight.data_ptr(), down.weight.data_ptr(),
             tuple(p.requires_grad for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj) for p in _base(m).parameters()))
    if mlp.__dict__.get("_unpackable") == state:
        return None
    packed = _pack(mlp)
    mlp.__dict__["_packed_mlp"] = packed
    mlp.__dict__["_unpackable"] = state if packed is None else None
    return packed


def mlp_forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
    packed = _packed(self)
    if packed is None:
        return self.down_proj(silu_mul(self.gate_proj(hidden_state), self.up_proj(hidden_state)))
    gate_up = F.linear(hidden_state, packed.gate_up, packed.gate_up_bias)
    for offset, module in ((0, self.gate_proj), (packed.width, self.up_proj)):
        delta = _lora_delta(module, hidden_state)
        if delta is not None:
            gate_up[..., offset:offset + packed.inner] += delta.to(gate_up.dtype)
    hidden = silu_mul_packed(gate_up)
    out = F.linear(hidden, packed.down, _base(self.down_proj).bias)
    delta = _lora_delta(self.down_proj, hidden[..., :packed.inner])
    return out if delta is None else out + delta.to(out.dtype)


class VisionInputs:
    """Forward pre-hook of the tower: its grid-dependent index tensors, built once per grid."""

    def __init__(self, tower: nn.Module, plans: dict):
        self.tower = tower
        self.plans = plans
        self.cache: OrderedDict = OrderedDict()

    def _build(self, grid_thw: torch.Tensor, device: torch.device) -> dict:
        tower = self.tower
        grid_thw = grid_thw.to(device)
        kwargs = {
            "position_ids": vision_utils.get_vision_position_ids(grid_thw, tower.spatial_merge_size),
            "cu_seqlens": vision_utils.get_vision_cu_seqlens(grid_thw),
        }
        kwargs["window_index"], kwargs["cu_window_seqlens"] = vision_utils.get_vision_window_index(
            grid_thw, spatial_merge_size=tower.spatial_merge_size, window_size=tower.window_size,
            patch_size=tower.patch_size)
        for name, key in (("max_seqlen", "cu_seqlens"), ("max_window_seqlen", "cu_window_seqlens")):
            value = get_max_seqlen(kwargs[key], tower.config)
            if value is not None:
                kwargs[name] = value
        for key in ("cu_seqlens", "cu_window_seqlens"):
            self.plans[id(kwargs[key])] = (kwargs[key], plan_attention(kwargs[key].tolist(), grid_thw.device))
        return kwargs

    def __call__(self, module, args, kwargs):
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid_thw is None or any(key in kwargs for key in ("cu_seqlens", "position_ids", "window_index")):
            return None
        # The index tensors go where the pixels are; the grid may stay on the host
        # (collate.vision_grid), which makes this lookup free of a device sync.
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        device = hidden.device if hidden is not None else grid_thw.device
        key = (device, tuple(map(tuple, grid_thw.tolist())))
        entry = self.cache.get(key)
        if entry is None:
            entry = self._build(grid_thw, device)
            self.cache[key] = entry
            while len(self.cache) > _CACHE_SIZE:
                _, old = self.cache.popitem(last=False)
                for name in ("cu_seqlens", "cu_window_seqlens"):
                    self.plans.pop(id(old[name]), None)
        else:
            self.cache.move_to_end(key)
        return args, {**kwargs, **entry}


def unpack_mlp(mlp: nn.Module) -> None:
    """Give a packed MLP's weights their own storage back (what :func:`_pack` shared); values unchanged."""
    if mlp.__dict__.pop("_packed_mlp", None) is not None:
        with torch.no_grad():
            for module in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                for param in _base(module).parameters(recurse=False):
                    param.data = param.data.clone()
    mlp.__dict__.pop("_unpackable", None)
