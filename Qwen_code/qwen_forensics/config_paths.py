"""Path fields of a parsed config: relocation of the user's default root, anchoring of relative names
(an output inside the output folder, anything else next to the config file), the optional
``resolve`` function of a field, the input existence check, and where each path came from (see
``config`` step 5)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/root/autodl-tmp"
ROOT_ENV_VAR = "QWEN_FORENSICS_ROOT"


class ConfigError(ValueError):
    """A config file or override that cannot be used as written."""


@dataclasses.dataclass
class ConfigMeta:
    """What loading learned besides the values: per path key its origin, and notes to show."""
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    key_names: dict[str, str] = dataclasses.field(default_factory=dict)  # field path -> key as written


def config_meta(cfg: Any) -> ConfigMeta:
    """The loading record of a config built by this module (an empty one for hand-built configs)."""
    meta = cfg.__dict__.get("_config_meta")
    if meta is None:
        meta = ConfigMeta()
        cfg.__dict__["_config_meta"] = meta
    return meta


def effective_root(cli_root: str | None = None) -> str | None:
    """The relocation root: ``--root`` wins over ``$QWEN_FORENSICS_ROOT``; None keeps the user's paths."""
    return cli_root or os.environ.get(ROOT_ENV_VAR) or None


def relocate_path(value: str, root: str | None, base_dir: Path | None = None) -> str:
    """Map one configured path: swap the default root prefix, resolve relative paths against ``base_dir``."""
    if root and (value == DEFAULT_ROOT or value.startswith(DEFAULT_ROOT + "/")):
        return str(Path(root).resolve() / value[len(DEFAULT_ROOT):].lstrip("/"))
    if not os.path.isabs(value) and base_dir is not None:
        return str((base_dir / value).resolve())
    return value


@dataclasses.dataclass
class PathContext:
    root: str | None
    base_dir: Path | None
    out_dir: Path | None
    overridden: set[str]
    meta: ConfigMeta
    check_inputs: bool


def key_name(meta: ConfigMeta, cls_name: str, dotted: str) -> str:
    return meta.key_names.get(f"{cls_name}.{dotted}", dotted)


def _origin(obj: Any, name: str, dotted: str, ctx: PathContext) -> str:
    if dotted in ctx.overridden:
        return "--set"
    return "config" if name in obj.__dict__.get("_given_keys", ()) else "default"


def resolve_paths(obj: Any, ctx: PathContext, prefix: str, cls_name: str) -> None:
    """Relocate, anchor and (optionally) check every path field of ``obj``, recursing into sections."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            resolve_paths(value, ctx, f"{dotted}.", cls_name)
            continue
        if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                resolve_paths(item, ctx, f"{dotted}[{i}].", cls_name)
            continue
        role = f.metadata.get("path")
        if role is None:
            continue
        key = key_name(ctx.meta, cls_name, dotted)
        origin = _origin(obj, f.name, dotted, ctx)
        if not isinstance(value, str) or not value:
            ctx.meta.sources[key] = "off (not in the config)" if origin == "default" else f"off ({origin})"
            continue
        given = value
        anchor = ctx.out_dir if role == "out" and ctx.out_dir is not None else ctx.base_dir
        value = relocate_path(value, ctx.root, anchor)
        resolve = f.metadata.get("resolve")
        if resolve is not None:
            try:
                value, note = resolve(value, role, ctx.check_inputs)
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"{key} = {given!r}: {err}") from None
            if note:
                ctx.meta.notes.append(f"{key}: {note}")
        elif role == "in" and ctx.check_inputs and not os.path.exists(value):
            raise ConfigError(f"{key} = {given!r}: {value} does not exist; fix the path in the config "
                              f"or pass --set {key}=PATH (nothing was loaded yet)")
        setattr(obj, f.name, value)
        ctx.meta.sources[key] = origin if given == value else f"{origin}: {given!r}"


def output_folder(cfg: Any, ctx: PathContext) -> Path | None:
    name = getattr(type(cfg), "OUTPUT_DIR", None)
    if name is None:
        return None
    value = getattr(cfg, name)
    relocated = relocate_path(value, ctx.root, ctx.base_dir)
    return Path(relocated)


def input_paths(cfg: Any) -> dict[str, str]:
    """Every input path of a parsed config, keyed by the name the user wrote (``datasets[0].annotation_file``)."""
    meta = config_meta(cfg)
    found: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            dotted = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, f"{dotted}.")
            elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
                for i, item in enumerate(value):
                    walk(item, f"{dotted}[{i}].")
            elif f.metadata.get("path") == "in" and isinstance(value, str) and value:
                found[key_name(meta, type(cfg).__name__, dotted)] = value

    walk(cfg, "")
    return found
