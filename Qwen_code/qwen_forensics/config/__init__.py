"""Config: how a script's JSON file, ``--set`` overrides and ``--root`` become a validated, typed
config (``loading``), how its paths are relocated, anchored and checked and where a run's outputs go
(``paths``), and the one rule for dtypes and precision on a device (``dtypes``). The bottom layer: it
imports nothing else of the library but ``files``.
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "Precision": "dtypes", "amp_name": "dtypes", "precision": "dtypes", "resolve_dtype": "dtypes",
    "ConfigError": "loading", "DEFAULT_ROOT": "loading", "ROOT_ENV_VAR": "loading", "apply_overrides": "loading",
    "build_arg_parser": "loading", "cap_worker_count": "loading", "cap_workers": "loading", "config_dict": "loading",
    "config_meta": "loading", "effective_root": "loading", "input_paths": "loading", "load_config": "loading", "load_config_and_paths":
    "loading", "option": "loading", "parse_config": "loading", "read_config_file": "loading", "relocate_path":
    "loading", "usable_cores": "loading",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
