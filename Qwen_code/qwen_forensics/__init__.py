"""Shared library for the three Qwen2.5-VL forgery pipelines (data, model, heads, metrics, I/O).

The packages export lazily (PEP 562): a package's ``__init__`` names what it exports and from which of its
modules (:func:`lazy_exports`), and a name is imported only when first used. ``from qwen_forensics.config
import load_config`` then loads the config code alone, not torch and transformers through the package's
other modules, which is what lets a script answer ``--help`` (or report a config error) in a fraction of a
second. Nothing is cached in the package: every lookup reads the defining module's attribute, so a test
that patches the defining module is seen by every caller."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each exported name to the module of
    the package that defines it (``{"load_config": "loading"}``)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
