"""Shared library for the three Qwen2.5-VL forgery pipelines (data, model, heads, metrics, I/O)."""
