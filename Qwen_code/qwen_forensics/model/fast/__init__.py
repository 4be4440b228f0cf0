"""The fast paths: batched window attention, precomputed vision inputs, fused kernels
(``window_attention``, ``fused_ops``), switched on and off with a handle that knows what it patched
and refuses a model or a transformers / PEFT release it was not made for (``switch``)."""

from qwen_forensics.model.fast.switch import FastPaths, enable_fast_paths, expected_counts, untested_versions
from qwen_forensics.model.fast.window_attention import plan_attention

__all__ = ["FastPaths", "enable_fast_paths", "expected_counts", "plan_attention", "untested_versions"]
