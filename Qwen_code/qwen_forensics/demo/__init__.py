"""Demo and test fixtures: a tiny Qwen2.5-VL in the real on-disk format (``tiny``) and a synthetic
forgery set in the user's layout (``dataset``, drawn by ``render``). Nothing here runs in a
pipeline on the user's data; the demo, the tests and the benchmarks build their inputs with it."""
