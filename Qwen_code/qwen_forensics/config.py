"""Typed JSON configs for every script: load, override, validate, relocate, save.

Every script owns one dataclass (see ``task_configs``). A config file is the user's JSON with the
keys of that dataclass; fields carry their documentation in ``metadata["help"]``. Loading:

1. read ``--config FILE`` (JSON object);
2. apply ``--set key=value`` overrides in order (``a.b=3`` reaches nested sections; values are
   parsed as JSON when they parse, else kept as strings, so ``--set image_size=null`` works);
3. reject unknown keys with the list of valid ones; ``working_dir`` is accepted and ignored
   (the seed used it only to ``chdir``; our scripts never depend on the working directory);
4. check every value's type against the field annotation;
5. relocate paths: fields marked ``path`` that start with the user's default root
   ``/root/autodl-tmp`` get that prefix replaced by ``--root DIR`` or the environment variable
   ``QWEN_FORENSICS_ROOT``. Relative path values are resolved against the config file's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_ROOT = "/root/autodl-tmp"
ROOT_ENV_VAR = "QWEN_FORENSICS_ROOT"
IGNORED_KEYS = {"working_dir": "ignored: scripts resolve every path themselves and never chdir"}

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, path: bool = False,
           factory: Any = dataclasses.MISSING) -> Any:
    """A documented dataclass field; ``path=True`` marks it for root relocation."""
    meta = {"help": help, "path": path}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate ``value`` against annotation ``tp``; returns the value (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _check_type(value, arm, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(_type_name(a) for a in args)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object with keys {sorted(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields and k not in IGNORED_KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}. Valid keys: {sorted(fields)}"
            + (f" (plus {sorted(IGNORED_KEYS)}, ignored)" if where == cls.__name__ else "")
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key '{name}' is missing ({f.metadata.get('help', '')})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (dotted keys create/enter nested objects)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {text}: '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def effective_root(cli_root: str | None = None) -> str | None:
    """The relocation root: ``--root`` wins over ``$QWEN_FORENSICS_ROOT``; None keeps the user's paths."""
    return cli_root or os.environ.get(ROOT_ENV_VAR) or None


def _relocate(obj: Any, root: str | None, base_dir: Path | None) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _relocate(value, root, base_dir)
        elif f.metadata.get("path") and isinstance(value, str) and value:
            setattr(obj, f.name, relocate_path(value, root, base_dir))


def relocate_path(value: str, root: str | None, base_dir: Path | None = None) -> str:
    """Map one configured path: swap the default root prefix, resolve relative paths against ``base_dir``."""
    if root and (value == DEFAULT_ROOT or value.startswith(DEFAULT_ROOT + "/")):
        return str(Path(root).resolve() / value[len(DEFAULT_ROOT):].lstrip("/"))
    if not os.path.isabs(value) and base_dir is not None:
        return str((base_dir / value).resolve())
    return value


def parse_config(cls: type[T], data: dict, *, overrides: list[str] = (), root: str | None = None,
                 base_dir: Path | None = None) -> T:
    """Build a validated ``cls`` from a dict (used by :func:`load_config` and tests)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: the config must be a JSON object")
    data = apply_overrides(data, list(overrides))
    for key, why in IGNORED_KEYS.items():
        if key in data:
            print(f"[config] '{key}' is {why}.", file=sys.stderr)
    cfg = _build(cls, data, cls.__name__)
    _relocate(cfg, effective_root(root), base_dir)
    return cfg


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err


def build_arg_parser(description: str, default_config: Path | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(default_config) if default_config else None,
                        required=default_config is None, help="JSON config file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; dotted keys reach nested sections; repeatable")
    parser.add_argument("--root", default=None,
                        help=f"relocate every path under {DEFAULT_ROOT} to this folder "
                             f"(also: environment variable {ROOT_ENV_VAR})")
    return parser


def load_config_and_paths(cls: type[T], *, description: str, default_config: Path | None = None,
                          argv: list[str] | None = None) -> tuple[T, str | None, Path]:
    """:func:`load_config` plus the relocation root and the config file's folder, for scripts that
    must relocate paths inside free-form dicts the typed layer cannot see (Task 2's training_args)."""
    args = build_arg_parser(description, default_config).parse_args(argv)
    base_dir = Path(args.config).resolve().parent
    try:
        cfg = parse_config(cls, read_config_file(args.config), overrides=args.overrides, root=args.root,
                           base_dir=base_dir)
    except ConfigError as err:
        raise SystemExit(f"config error ({args.config}): {err}") from None
    return cfg, effective_root(args.root), base_dir


def load_config(cls: type[T], *, description: str, default_config: Path | None = None,
                argv: list[str] | None = None) -> T:
    """Parse ``--config/--set/--root`` from ``argv`` and return the validated config."""
    return load_config_and_paths(cls, description=description, default_config=default_config, argv=argv)[0]
