"""Fused GPU kernels for the memory-bound steps of Qwen2.5-VL's blocks, with the eager arithmetic.

Profiling the 7B vision tower (SPEC 8) puts more time into elementwise passes than into its
matrix products: transformers' vision rotary embedding runs about ten fp32 passes over q and k,
RMSNorm six over every hidden state, SiLU-and-multiply three. Each kernel here does one read and
one write, in fp32 registers, rounding exactly where the eager code rounds, so its outputs and
gradients are the eager ones up to the order of fp32 operations (tested against the eager path).
Intermediate roundings to bf16 are done in integer arithmetic (``_round_to``): written as a float
round trip, ``x.to(bf16).to(fp32)``, the compiler dropped them on the H200 (a quarter of the LM
rotary's outputs then differed from transformers' by one bf16 step; with it, none do).

- ``rotary_split(qkv, cos, sin, heads)``: the attention's packed ``qkv`` projection -> rotated
  ``q``, ``k`` and ``v``, each [N, heads, head_dim]. In training ``v`` is a contiguous copy: only
  ``cos``/``sin`` are kept for backward (the eager path keeps fp32 copies of q and k), and the qkv
  buffer is freed. Without autograd (no grad mode, or qkv not requiring grad) the kernel reads and
  writes only q and k (a third less traffic) and ``v`` is a view of qkv, as on the eager path.
- ``rotary_lm(q, k, cos, sin)``: the language model's rotary embedding, bit for bit (inference only).
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
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, apply_rotary_pos_emb_vision

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
    def _round_to(x, ty: tl.constexpr):
        # x (fp32) rounded to the nearest ``ty`` value, ties to even, kept in fp32. For bf16 in
        # integer arithmetic (the top 16 bits of the rounded fp32 pattern): bit for bit what
        # torch's bf16 conversion does, on the GPU and in Triton's interpreter alike.
        if ty == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        else:
            return x.to(ty).to(tl.float32)

    @triton.jit
    def _rope_tile(cos, sin, n, HEADS: tl.constexpr, HEADS_P: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                   HALF_P: tl.constexpr, BLOCK_N: tl.constexpr):
        # This program's [BLOCK_N tokens, heads, half] block: token rows t, the offset of (head, j)
        # within a row, the mask, and the token's cos/sin for both halves (read once per token).
        t = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)[:, None, None]
        h = tl.arange(0, HEADS_P)[None, :, None]
        j = tl.arange(0, HALF_P)[None, None, :]
        row_ok = t < n
        angle = t * D + j
        angle_ok = row_ok & (j < HALF)
        c1 = tl.load(cos + angle, mask=angle_ok, other=0.0).to(tl.float32)
        c2 = tl.load(cos + angle + HALF, mask=angle_ok, other=0.0).to(tl.float32)
        s1 = tl.load(sin + angle, mask=angle_ok, other=0.0).to(tl.float32)
        s2 = tl.load(sin + angle + HALF, mask=angle_ok, other=0.0).to(tl.float32)
        return t, h * D + j, row_ok & (h < HEADS) & (j < HALF), c1, c2, s1, s2

    @triton.jit
    def _rope_fwd(src, cos, sin, dst, n, SRC_ROW: tl.constexpr, PART: tl.constexpr, HEADS: tl.constexpr,
                  HEADS_P: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
                  ROTATE: tl.constexpr, COPY: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_EACH: tl.constexpr):
        # One program: BLOCK_N tokens x all heads x both halves of head_dim, as a [BLOCK_N, heads,
        # half] block: the first and second half of every head are loaded as their own contiguous
        # runs, so rotate_half needs no second (gathered) load, and cos/sin are read once per token.
        # Source row t, part p (q, k, v of a packed qkv), head h, element j: src[t * SRC_ROW +
        # p * PART + h * D + j]; destination: a [ROTATE + COPY, n, HEADS, D] buffer. The first ROTATE
        # parts are rotated, the next COPY parts copied (v in training).
        t, within, mask, c1, c2, s1, s2 = _rope_tile(cos, sin, n, HEADS, HEADS_P, D, HALF, HALF_P, BLOCK_N)
        ty = dst.dtype.element_ty
        for part in tl.static_range(ROTATE + COPY):
            at = src + t * SRC_ROW + part * PART + within
            out = dst + (part * n + t) * (HEADS * D) + within
            x1 = tl.load(at, mask=mask, other=0.0)
            x2 = tl.load(at + HALF, mask=mask, other=0.0)
            if part < ROTATE:
                x1 = x1.to(tl.float32)
                x2 = x2.to(tl.float32)
                # rotate_half(x) = cat(-x2, x1). ROUND_EACH: the LM's eager path multiplies and adds
                # in half precision, so each product and the sum are rounded as it rounds them; the
                # vision path computes in fp32 and rounds once.
                if ROUND_EACH:
                    y1 = _round_to(_round_to(x1 * c1, ty) + _round_to(-(x2 * s1), ty), ty)
                    y2 = _round_to(_round_to(x2 * c2, ty) + _round_to(x1 * s2, ty), ty)
                else:
                    y1 = x1 * c1 - x2 * s1
                    y2 = x2 * c2 + x1 * s2
                tl.store(out, y1.to(ty), mask=mask)
                tl.store(out + HALF, y2.to(ty), mask=mask)
            else:
                tl.store(out, x1, mask=mask)
                tl.store(out + HALF, x2, mask=mask)

    @triton.jit
    def _rope_bwd(gq, gk, gv, cos, sin, gsrc, n, HEADS: tl.constexpr, HEADS_P: tl.constexpr, D: tl.constexpr,
                  HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_N: tl.constexpr):
        # The vision path's backward: (dq, dk, dv), each [n, HEADS, D], into the packed [n, 3 * HEADS * D]
        # gradient of qkv. The transpose of x -> x * cos + rotate_half(x) * sin is
        # g -> g * cos + rotate_half^T(g * sin), with rotate_half^T(y) = cat(y2, -y1).
        t, within, mask, c1, c2, s1, s2 = _rope_tile(cos, sin, n, HEADS, HEADS_P, D, HALF, HALF_P, BLOCK_N)
        ty = gsrc.dtype.element_ty
        for part in tl.static_range(3):
            g = gq if part == 0 else (gk if part == 1 else gv)
            at = g + t * (HEADS * D) + within
            out = gsrc + t * (3 * HEADS * D) + part * (HEADS * D) + within
            g1 = tl.load(at, mask=mask, other=0.0)
            g2 = tl.load(at + HALF, mask=mask, other=0.0)
            if part < 2:
                g1 = g1.to(tl.float32)
                g2 = g2.to(tl.float32)
                tl.store(out, (g1 * c1 + g2 * s2).to(ty), mask=mask)
                tl.store(out + HALF, (g2 * c2 - g1 * s1).to(ty), mask=mask)
            else:
                tl.store(out, g1, mask=mask)
                tl.store(out + HALF, g2, mask=mask)

    @triton.jit
    def _rms_fwd(x, w, y, rstd, n, C: tl.constexpr, eps, BLOCK_C: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x32 = tl.load(x + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x32 * x32, axis=0) / C + eps)
        normed = _round_to(x32 * r, y.dtype.element_ty)
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
        gn = _round_to(gn, gx.dtype.element_ty)
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
        act = _round_to(g / (1.0 + tl.exp(-g)), y.dtype.element_ty)
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
        act = _round_to(g / (1.0 + tl.exp(-g)), out_ty)
        grad_act = _round_to(grad * u, out_ty)
        tl.store(g_up + offs, (grad * act).to(out_ty), mask=mask)
        tl.store(g_gate + offs, (grad_act * sig * (1.0 + g * (1.0 - sig))).to(out_ty), mask=mask)


# Elements of one rotary program: BLOCK_N tokens x pow2(heads) x pow2(head_dim / 2).
_ROTARY_BLOCK = 2048


if triton is not None:
    @triton.jit
    def _silu_mul_packed_fwd(gu, y, rows, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
        # gu rows hold [gate | up], each WIDTH wide; y rows are WIDTH wide.
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < WIDTH
        g = tl.load(gu + row * (2 * WIDTH) + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu + row * (2 * WIDTH) + WIDTH + cols, mask=mask, other=0.0).to(tl.float32)
        act = _round_to(g / (1.0 + tl.exp(-g)), y.dtype.element_ty)
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
        act = _round_to(g / (1.0 + tl.exp(-g)), out_ty)
        grad_act = _round_to(grad * u, out_ty)
        tl.store(ggu + row * (2 * WIDTH) + WIDTH + cols, (grad * act).to(out_ty), mask=mask)
        tl.store(ggu + row * (2 * WIDTH) + cols, (grad_act * sig * (1.0 + g * (1.0 - sig))).to(out_ty), mask=mask)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _rope_shape(heads: int, d: int) -> dict:
    heads_p, half_p = _pow2(heads), _pow2(d // 2)
    return {"HEADS": heads, "HEADS_P": heads_p, "D": d, "HALF": d // 2, "HALF_P": half_p,
            "BLOCK_N": max(1, _ROTARY_BLOCK // (heads_p * half_p))}


def _rotary_launch(qkv, cos, sin, heads, write_v):
    """The forward kernel: rotated q, k and, with ``write_v``, a contiguous v (else v is a view of qkv)."""
    n, c3 = qkv.shape
    c = c3 // 3
    d = c // heads
    out = torch.empty(3 if write_v else 2, n, heads, d, dtype=qkv.dtype, device=qkv.device)
    shape = _rope_shape(heads, d)
    _rope_fwd[(triton.cdiv(n, shape["BLOCK_N"]),)](qkv, cos, sin, out, n, SRC_ROW=c3, PART=c, ROTATE=2,
                                                   COPY=int(write_v), ROUND_EACH=False, **shape)
    v = out[2] if write_v else qkv.view(n, 3, heads, d)[:, 2]
    return out[0], out[1], v


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
        shape = _rope_shape(heads, d)
        _rope_bwd[(triton.cdiv(n, shape["BLOCK_N"]),)](gq, gk, gv, cos, sin, gqkv, n, **shape)
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


def _rotary_lm_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    b, length, heads, d = x.shape
    n = b * length
    out = torch.empty(1, n, heads, d, dtype=x.dtype, device=x.device)
    shape = _rope_shape(heads, d)
    _rope_fwd[(triton.cdiv(n, shape["BLOCK_N"]),)](x, cos, sin, out, n, SRC_ROW=heads * d, PART=0, ROTATE=1, COPY=0,
                                                   ROUND_EACH=True, **shape)
    return out[0].view(b, length, heads, d).transpose(1, 2)


def rotary_lm(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
              use_kernel: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The language model's rotary embedding (transformers' ``apply_rotary_pos_emb``) for q, k as the
    projections give them, [B, S, heads, head_dim], and cos, sin [B, S, head_dim] (mRoPE already
    recomposed by the model's rotary module). Returns q, k rotated as [B, heads, S, head_dim] views
    with the eager path's strides (memory in [B, S, heads, head_dim] order).

    The kernel (one read and one write of q and of k, instead of about ten passes over strided views)
    rounds each product and the sum to the half-precision dtype exactly where the eager code does,
    so its values are the eager ones bit for bit on the GPU. It has no backward: with autograd it is
    the eager formula.
    """
    if use_kernel is None:
        use_kernel = kernels_available(q, k, cos, sin)
    b, length = q.shape[:2]
    fits = (q.dim() == k.dim() == 4 and cos.shape == sin.shape == (b, length, q.shape[-1]) and k.shape[:2] == (b, length)
            and k.shape[-1] == q.shape[-1] and q.shape[-1] % 2 == 0
            and q.dtype == k.dtype == cos.dtype == sin.dtype and all(t.is_contiguous() for t in (q, k, cos, sin)))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, cos, sin))
    if use_kernel and fits and not needs_grad:
        return _rotary_lm_launch(q, cos, sin), _rotary_lm_launch(k, cos, sin)
    return apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, use_kernel: bool | None = None) -> torch.Tensor:
    """Qwen2.5-VL's RMSNorm; the kernel where the weight matches the input's dtype and gets no gradient
    (frozen, or no autograd: an evaluation of a model whose weights were never frozen)."""
    if use_kernel is None:
        use_kernel = kernels_available(x, weight)
    if use_kernel and weight.dtype == x.dtype and not (torch.is_grad_enabled() and weight.requires_grad):
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
