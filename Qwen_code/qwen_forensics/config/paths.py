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
    problems: list[str] = dataclasses.field(default_factory=list)  # everything wrong, reported together
    source: str = "the config"  # how problems name the config's origin (its file)
    output_line: str | None = None  # where this run's outputs go and why (printed at the start)


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
    root: str | None            # --root / $QWEN_FORENSICS_ROOT: relocates every path under DEFAULT_ROOT
    base_dir: Path | None
    out_dir: Path | None
    overridden: set[str]
    meta: ConfigMeta
    check_inputs: bool
    implied_root: str | None = None  # relocates only the defaults (see implied_root)


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
        if role == "out_dir":
            setattr(obj, f.name, str(ctx.out_dir))
            ctx.meta.sources[key] = origin if value == str(ctx.out_dir) else f"{origin}: {value!r}"
            continue
        given = value
        anchor = ctx.out_dir if role == "out" and ctx.out_dir is not None else ctx.base_dir
        root = ctx.root or (ctx.implied_root if origin == "default" else None)
        value = relocate_path(value, root, anchor)
        resolve = f.metadata.get("resolve")
        if resolve is not None:
            try:
                value, note = resolve(value, role, ctx.check_inputs)
            except (FileNotFoundError, ValueError) as err:
                ctx.meta.problems.append(f"{key} = {given!r}: {err}  {_path_source(given, value, origin, root, ctx)}")
                continue
            if note:
                ctx.meta.notes.append(f"{key}: {note}")
        elif role == "in" and ctx.check_inputs and not os.path.exists(value):
            ctx.meta.problems.append(f"{key} = {given!r}: {value} does not exist (nothing was loaded yet)  "
                                     f"{_path_source(given, value, origin, root, ctx)}")
            continue
        setattr(obj, f.name, value)
        ctx.meta.sources[key] = origin if given == value else f"{origin}: {given!r}"


def _path_source(given: str, used: str, origin: str, root: str | None, ctx: PathContext) -> str:
    """Where a bad path came from and the fix that fits: ``--root`` for the user's default layout."""
    under_default = given == DEFAULT_ROOT or given.startswith(DEFAULT_ROOT + "/")
    if under_default and ctx.root:
        return (f"(from --root {ctx.root}, which moved {given} to {used}; check the folder given to --root or "
                f"set this key)")
    if under_default:
        where = "--set" if origin == "--set" else ("the default" if origin == "default" else ctx.meta.source)
        return (f"(from {where}; your files are elsewhere? pass --root DIR, the folder that holds data/ and "
                f"Qwen2.5-VL-7B-Instruct/, or set this key)")
    if origin == "--set":
        return "(from --set)"
    if origin == "default":
        return "(from the default; set this key)"
    return f"(from {ctx.meta.source}: fix the path there or pass --set KEY=PATH)"


def _top_level_paths(cfg: Any, role: str, ctx: PathContext) -> list[tuple[str, str, str]]:
    """(field name, value, origin) of ``cfg``'s top-level path fields of ``role`` holding a path."""
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("path") == role and isinstance(value, str) and value:
            found.append((f.name, value, _origin(cfg, f.name, f.name, ctx)))
    return found


def implied_root(cfg: Any, ctx: PathContext) -> str | None:
    """The root the config's own paths imply, for the defaults it leaves out (no ``--root`` given).

    A user who moved the default layout edits the paths: ``data_root: /work/me/data`` where the
    default is ``/root/autodl-tmp/data``. Each path the config names that ends like its default's part
    below ``/root/autodl-tmp`` implies a root (here ``/work/me``); when all such paths imply one root,
    the defaults the config leaves out (an output folder it never names) go under it instead of
    ``/root/autodl-tmp``. Paths that imply different roots imply none.
    """
    implied = set()
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), f.default
        if (f.metadata.get("path") is None or not isinstance(value, str) or not isinstance(default, str)
                or not default.startswith(DEFAULT_ROOT + "/") or _origin(cfg, f.name, f.name, ctx) == "default"):
            continue
        tail = default[len(DEFAULT_ROOT):]
        value = os.path.normpath(value)
        if os.path.isabs(value) and value.endswith(tail) and len(value) > len(tail):
            implied.add(value[: -len(tail)])
    if len(implied) != 1:
        return None
    found = implied.pop()
    return None if found == DEFAULT_ROOT else found


def output_folder(cfg: Any, ctx: PathContext) -> Path | None:
    """The run's output folder: the ``OUTPUT_DIR`` field when the config names it; else the folder of
    the first absolute output path the config names (``csv_path``, then ``output_json``, ...: the
    class's output fields in order), so that one run's outputs land in one folder; else the default
    (under ``--root``, or the root the config's paths imply). Records the choice in ``meta.output_line``."""
    name = getattr(type(cfg), "OUTPUT_DIR", None)
    if name is None:
        return None
    origin = _origin(cfg, name, name, ctx)
    key = key_name(ctx.meta, type(cfg).__name__, name)
    if origin != "default":
        folder = Path(relocate_path(getattr(cfg, name), ctx.root, ctx.base_dir))
        ctx.meta.output_line = f"outputs of this run: {folder} ({key})"
        return folder
    for field_name, value, field_origin in _top_level_paths(cfg, "out", ctx):
        if field_origin != "default" and (os.path.isabs(value) or value.startswith(DEFAULT_ROOT)):
            folder = Path(relocate_path(value, ctx.root, None)).parent
            written = key_name(ctx.meta, type(cfg).__name__, field_name)
            ctx.meta.output_line = (f"outputs of this run: {folder} (the folder of {written}; the config names no "
                                    f"{key})")
            return folder
    folder = Path(relocate_path(getattr(cfg, name), ctx.root or ctx.implied_root, ctx.base_dir))
    if ctx.root:
        why = f"{key} not in the config: its default under --root {ctx.root}"
    elif ctx.implied_root:
        why = f"{key} not in the config: its default under {ctx.implied_root}, the root the config's paths imply"
    else:
        why = f"{key} not in the config: its default"
    ctx.meta.output_line = f"outputs of this run: {folder} ({why})"
    return folder


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
