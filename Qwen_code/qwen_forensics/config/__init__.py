"""Config: how a script's JSON file, ``--set`` overrides and ``--root`` become a validated, typed
config (``loading``), how its paths are relocated, anchored and checked and where a run's outputs go
(``paths``), and the one rule for dtypes and precision on a device (``dtypes``). The bottom layer: it
imports nothing else of the library but ``files``.
"""

from qwen_forensics.config.dtypes import Precision, amp_name, precision, resolve_dtype
from qwen_forensics.config.loading import (DEFAULT_ROOT, ROOT_ENV_VAR, ConfigError, apply_overrides, build_arg_parser,
                                           cap_workers, config_dict, config_meta, effective_root, input_paths,
                                           load_config, load_config_and_paths, option, parse_config, read_config_file,
                                           relocate_path, usable_cores)

__all__ = ["ConfigError", "DEFAULT_ROOT", "Precision", "ROOT_ENV_VAR", "amp_name", "apply_overrides",
           "build_arg_parser", "cap_workers", "config_dict", "config_meta", "effective_root", "input_paths", "load_config",
           "load_config_and_paths",
           "option", "parse_config", "precision", "read_config_file", "relocate_path", "resolve_dtype", "usable_cores"]
