"""Fused GPU kernels for the memory-bound steps of Qwen2.5-VL's blocks, with the eager arithmetic.

Profiling the 7B vision tower (SPEC 8) puts more time into elementwise passes than into its
matrix products: transformers' vision rotary embedding runs about ten fp32 passes over q and k,
RMSNorm six over every hidden state, SiLU-and-multiply three. Each kernel here does one read and
one write, in fp32 registers, rounding exactly where the eager code rounds, so its outputs and
gradients are the eager ones up to the order of fp32 operations (tested against the eager path).

- ``rotary_split(qkv, cos, sin, heads)``: the attention's packed ``qkv`` projection -> rotated
  ``q``, ``k`` and ``v``, each [N, heads, head_dim]. In training ``v`` is a contiguous copy: only
  ``cos``/``sin`` are kept for backward (the eager path keeps fp32 copies of q and k), and the qkv
  buffer is freed. Without autograd (no grad mode, or qkv not requiring grad) the kernel reads and
  writes only q and k (a third less traffic) and ``v`` is a view of qkv, as on the eager path.
- ``rms_norm(x, weight, eps)``: ``weight * bf16(x32 * rsqrt(mean(x32^2) + eps))``; keeps the
  half-precision input and one fp32 value per row for backward (eager keeps an fp32 copy).
- ``silu_mul(gate, up)``: ``bf16(silu(gate)) * up``; keeps gate and up (eager keeps a third tensor);
  ``silu_mul_packed(gu)`` the same for one packed [gate | up] GEMM output.

Kernels run for CUDA tensors in bf16/fp16 when Triton is installed; everything else (CPU, fp32,
trainable norm weights) takes the eager formula, so these functions are drop-in everywhere. With
``TRITON_INTERPRET=1`` set before import, ``use_kernel=True`` runs the kernels on the CPU for tests.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with every CUDA build of torch
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def kernels_available(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can run on these tensors (CUDA half precision, or the interpreter)."""
    if triton is None:
        return False
    return all(t.dtype in KERNEL_DTYPES + ((torch.float32,) if INTERPRET else ()) and (t.is_cuda or INTERPRET)
               for t in tensors)


# ----------------------------------------------------------------------------------- eager reference
def rotary_split_eager(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int):
    """transformers' vision attention: split qkv, rotate q and k in fp32, round back."""
    n = qkv.shape[0]
    q, k, v = qkv.reshape(n, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    q_rot, k_rot = apply_rotary_pos_emb_vision(q, k, cos, sin)
    return q_rot, k_rot, v


def rms_norm_eager(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def silu_mul_eager(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


if triton is not None:
    @triton.jit
    def _rotary_fwd(qkv, cos, sin, q_out, k_out, v_out, n, C: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, WRITE_V: tl.constexpr):
        # One program: BLOCK_N tokens x all heads, so every load is a contiguous run of the row.
        # WRITE_V=False (inference): v is left in qkv and v_out is never touched.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        d = cols % D
        first = d < HALF
        partner = cols - d + tl.where(first, d + HALF, d - HALF)
        mask = (rows[:, None] < n) & (cols[None, :] < C)
        angle = rows[:, None] * D + d[None, :]
        c = tl.load(cos + angle, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(sin + angle, mask=mask, other=0.0).to(tl.float32)
        # rotate_half(x) = cat(-x2, x1): the partner element, negated in the first half.
        sign = tl.where(first, -1.0, 1.0)[None, :]
        src = rows[:, None] * (3 * C)
        out = rows[:, None] * C + cols[None, :]
        for part in tl.static_range(2):
            x = tl.load(qkv + src + part * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            xp = tl.load(qkv + src + part * C + partner[None, :], mask=mask, other=0.0).to(tl.float32)
            y = x * c + (sign * xp) * s
            dst = q_out if part == 0 else k_out
            tl.store(dst + out, y.to(dst.dtype.element_ty), mask=mask)
        if WRITE_V:
            tl.store(v_out + out, tl.load(qkv + src + 2 * C + cols[None, :], mask=mask, other=0.0), mask=mask)

    @triton.jit
    def _rotary_bwd(gq, gk, gv, cos, sin, gqkv, n, C: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        d = cols % D
        first = d < HALF
        dp = tl.where(first, d + HALF, d - HALF)
        partner = cols - d + dp
        mask = (rows[:, None] < n) & (cols[None, :] < C)
        c = tl.load(cos + rows[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
        sp = tl.load(sin + rows[:, None] * D + dp[None, :], mask=mask, other=0.0).to(tl.float32)
        # The transpose of x -> x * cos + rotate_half(x) * sin: rotate_half^T(y) = cat(y2, -y1).
        sign = tl.where(first, 1.0, -1.0)[None, :]
        src = rows[:, None] * C
        dst = rows[:, None] * (3 * C)
        for part in tl.static_range(2):
            g = gq if part == 0 else gk
            x = tl.load(g + src + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            xp = tl.load(g + src + partner[None, :], mask=mask, other=0.0).to(tl.float32)
            y = x * c + sign * (xp * sp)
            tl.store(gqkv + dst + part * C + cols[None, :], y.to(gqkv.dtype.element_ty), mask=mask)
        tl.store(gqkv + dst + 2 * C + cols[None, :], tl.load(gv + src + cols[None, :], mask=mask, other=0.0),
                 mask=mask)

    @triton.jit
    def _rms_fwd(x, w, y, rstd, n, C: tl.constexpr, eps, BLOCK_C: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x32 = tl.load(x + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x32 * x32, axis=0) / C + eps)
        normed = (x32 * r).to(y.dtype.element_ty).to(tl.float32)
        weight = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y + row * C + cols, (weight * normed).to(y.dtype.element_ty), mask=mask)
        tl.store(rstd + row, r)

    @triton.jit
    def _rms_bwd(g, x, w, rstd, gx, C: tl.constexpr, BLOCK_C: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x32 = tl.load(x + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        weight = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
        # Eager rounds the gradient of weight * n (a half-precision product) before the fp32 part.
        gn = (tl.load(g + row * C + cols, mask=mask, other=0.0).to(tl.float32) * weight)
        gn = gn.to(gx.dtype.element_ty).to(tl.float32)
        r = tl.load(rstd + row)
        dot = tl.sum(gn * x32, axis=0)
        out = r * gn - x32 * (r * r * r) * (dot / C)
        tl.store(gx + row * C + cols, out.to(gx.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_fwd(gate, up, y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(gate + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up + offs, mask=mask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(y.dtype.element_ty).to(tl.float32)
        tl.store(y + offs, (act * u).to(y.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_bwd(go, gate, up, g_gate, g_up, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        out_ty = g_gate.dtype.element_ty
        grad = tl.load(go + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gate + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up + offs, mask=mask, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        act = (g / (1.0 + tl.exp(-g))).to(out_ty).to(tl.float32)
        grad_act = (grad * u).to(out_ty).to(tl.float32)
        tl.store(g_up + offs, (grad * act).to(out_ty), mask=mask)
        tl.store(g_gate + offs, (grad_act * sig * (1.0 + g * (1.0 - sig))).to(out_ty), mask=mask)


_ROTARY_ROWS = 4


if triton is not None:
    @triton.jit
    def _silu_mul_packed_fwd(gu, y, rows, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        # gu rows hold [gate | up], each WIDTH wide; y rows are WIDTH wide.
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < WIDTH
        g = tl.load(gu + row * (2 * WIDTH) + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu + row * (2 * WIDTH) + WIDTH + cols, mask=mask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(y.dtype.element_ty).to(tl.float32)
        tl.store(y + row * WIDTH + cols, (act * u).to(y.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_packed_bwd(go, gu, ggu, rows, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < WIDTH
        out_ty = ggu.dtype.element_ty
        grad = tl.load(go + row * WIDTH + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gu + row * (2 * WIDTH) + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu + row * (2 * WIDTH) + WIDTH + cols, mask=mask, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        act = (g / (1.0 + tl.exp(-g))).to(out_ty).to(tl.float32)
        grad_act = (grad * u).to(out_ty).to(tl.float32)
        tl.store(ggu + row * (2 * WIDTH) + WIDTH + cols, (grad * act).to(out_ty), mask=mask)
        tl.store(ggu + row * (2 * WIDTH) + cols, (grad_act * sig * (1.0 + g * (1.0 - sig))).to(out_ty), mask=mask)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _rotary_launch(qkv, cos, sin, heads, write_v):
    """The forward kernel: rotated q, k and, with ``write_v``, a contiguous v (else v is a view of qkv)."""
    n, c3 = qkv.shape
    c = c3 // 3
    d = c // heads
    q, k = (torch.empty(n, heads, d, dtype=qkv.dtype, device=qkv.device) for _ in range(2))
    v = torch.empty(n, heads, d, dtype=qkv.dtype, device=qkv.device) if write_v else qkv.view(n, 3, heads, d)[:, 2]
    _rotary_fwd[(triton.cdiv(n, _ROTARY_ROWS),)](qkv, cos, sin, q, k, v, n, C=c, D=d, HALF=d // 2,
                                                 BLOCK_N=_ROTARY_ROWS, BLOCK_C=_pow2(c), WRITE_V=write_v)
    return q, k, v


class _RotarySplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, heads):
        n, c3 = qkv.shape
        c = c3 // 3
        d = c // heads
        qkv = qkv.contiguous()
        cos, sin = cos.contiguous(), sin.contiguous()
        q, k, v = _rotary_launch(qkv, cos, sin, heads, write_v=True)
        ctx.save_for_backward(cos, sin)
        ctx.shape = (n, c, d, heads, qkv.dtype)
        return q, k, v

    @staticmethod
    def backward(ctx, gq, gk, gv):
        cos, sin = ctx.saved_tensors
        n, c, d, heads, dtype = ctx.shape
        gq, gk, gv = (torch.zeros(n, heads, d, dtype=dtype, device=cos.device) if g is None else g.contiguous()
                      for g in (gq, gk, gv))
        gqkv = torch.empty(n, 3 * c, dtype=dtype, device=cos.device)
        _rotary_bwd[(triton.cdiv(n, _ROTARY_ROWS),)](gq, gk, gv, cos, sin, gqkv, n, C=c, D=d, HALF=d // 2,
                                                     BLOCK_N=_ROTARY_ROWS, BLOCK_C=_pow2(c))
        return gqkv, None, None, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, c = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        _rms_fwd[(rows,)](x2, weight.contiguous(), y, rstd, rows, C=c, eps=eps, BLOCK_C=_pow2(c))
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        x2, weight, rstd = ctx.saved_tensors
        rows, c = x2.shape
        gx = torch.empty_like(x2)
        _rms_bwd[(rows,)](g.reshape(rows, c).contiguous(), x2, weight.contiguous(), rstd, gx, C=c, BLOCK_C=_pow2(c))
        return gx.reshape(ctx.shape), None, None


class _SiluMul(torch.autograd.Function):
    BLOCK = 1024

    @staticmethod
    def forward(ctx, gate, up):
        gate, up = gate.contiguous(), up.contiguous()
        y = torch.empty_like(gate)
        n = gate.numel()
        _silu_mul_fwd[(triton.cdiv(n, _SiluMul.BLOCK),)](gate, up, y, n, BLOCK=_SiluMul.BLOCK)
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    def backward(ctx, go):
        gate, up = ctx.saved_tensors
        g_gate, g_up = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _silu_mul_bwd[(triton.cdiv(n, _SiluMul.BLOCK),)](go.contiguous(), gate, up, g_gate, g_up, n,
                                                        BLOCK=_SiluMul.BLOCK)
        return g_gate, g_up


class _SiluMulPacked(torch.autograd.Function):
    BLOCK = 1024

    @staticmethod
    def forward(ctx, gu):
        width = gu.shape[-1] // 2
        flat = gu.reshape(-1, 2 * width).contiguous()
        rows = flat.shape[0]
        y = torch.empty(rows, width, dtype=gu.dtype, device=gu.device)
        _silu_mul_packed_fwd[(rows, triton.cdiv(width, _SiluMulPacked.BLOCK))](flat, y, rows, WIDTH=width,
                                                                              BLOCK=_SiluMulPacked.BLOCK)
        ctx.save_for_backward(flat)
        ctx.shape = gu.shape
        return y.reshape(*gu.shape[:-1], width)

    @staticmethod
    def backward(ctx, go):
        flat, = ctx.saved_tensors
        rows, width = flat.shape[0], flat.shape[1] // 2
        ggu = torch.empty_like(flat)
        _silu_mul_packed_bwd[(rows, triton.cdiv(width, _SiluMulPacked.BLOCK))](
            go.reshape(rows, width).contiguous(), flat, ggu, rows, WIDTH=width, BLOCK=_SiluMulPacked.BLOCK)
        return ggu.reshape(ctx.shape)


def rotary_split(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, *,
                 use_kernel: bool | None = None):
    """Rotated q, k and v ([N, heads, head_dim] each) from the packed qkv projection [N, 3 * C].

    q and k are new contiguous tensors. With autograd (grad mode on and ``qkv.requires_grad``) the
    kernel also copies v out, so qkv can be freed before backward; otherwise (inference) v is a view
    of qkv, ``qkv.view(N, 3, heads, head_dim)[:, 2]`` (stride (3 * C, head_dim, 1)), as the eager
    path always returns it, and the kernel moves only q and k. The q, k values are the same either way.
    """
    if use_kernel is None:
        use_kernel = kernels_available(qkv)
    if use_kernel and qkv.dim() == 2 and cos.shape == sin.shape and cos.dim() == 2:
        if torch.is_grad_enabled() and qkv.requires_grad:
            return _RotarySplit.apply(qkv, cos, sin, heads)
        return _rotary_launch(qkv.contiguous(), cos.contiguous(), sin.contiguous(), heads, write_v=False)
    return rotary_split_eager(qkv, cos, sin, heads)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, use_kernel: bool | None = None) -> torch.Tensor:
    """Qwen2.5-VL's RMSNorm; the kernel only where the weight is frozen and matches the input's dtype."""
    if use_kernel is None:
        use_kernel = kernels_available(x, weight)
    if use_kernel and not weight.requires_grad and weight.dtype == x.dtype:
        return _RMSNorm.apply(x, weight, eps)
    return rms_norm_eager(x, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, use_kernel: bool | None = None) -> torch.Tensor:
    """``silu(gate) * up`` as in transformers' MLPs."""
    if use_kernel is None:
        use_kernel = kernels_available(gate, up)
    if use_kernel and gate.shape == up.shape and gate.dtype == up.dtype:
        return _SiluMul.apply(gate, up)
    return silu_mul_eager(gate, up)


def silu_mul_packed(gu: torch.Tensor, *, use_kernel: bool | None = None) -> torch.Tensor:
    """``silu(gate) * up`` for ``gu = [gate | up]`` (one GEMM's output, last dim 2 * width)."""
    width = gu.shape[-1] // 2
    if use_kernel is None:
        use_kernel = kernels_available(gu)
    if use_kernel:
        return _SiluMulPacked.apply(gu)
    return silu_mul_eager(gu[..., :width], gu[..., width:])
