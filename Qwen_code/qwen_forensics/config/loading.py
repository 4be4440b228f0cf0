"""Typed JSON configs for every script: load, override, validate, relocate, save.

Every script owns one dataclass (see ``task_configs``). A config file is the user's JSON with the
keys of that dataclass; fields carry their documentation in ``metadata["help"]``. Loading:

1. read ``--config FILE`` (JSON object);
2. apply ``--set key=value`` overrides in order (``a.b=3`` reaches nested sections; values are
   parsed as JSON when they parse, else kept as strings, so ``--set image_size=null`` works);
3. rename the earlier scripts' key names (a class's ``ALIASES``, e.g. ``ann_eval`` ->
   ``annotation_file``) with a note; reject unknown keys with the list of valid ones;
   ``working_dir`` is accepted and ignored (the seed used it only to ``chdir``; our scripts never
   depend on the working directory); an unknown key that is close to a valid one gets "did you mean";
4. check every value's type against the field annotation;
5. resolve paths. Fields are marked ``path="in"`` (something the script reads), ``"out"`` (a file
   or folder it writes) or ``"out_dir"`` (its output folder, named by the class's ``OUTPUT_DIR``).
   A value starting with the user's default root ``/root/autodl-tmp`` gets that prefix replaced by
   ``--root DIR`` or ``$QWEN_FORENSICS_ROOT``. A relative *output* is a name inside the output
   folder (``"train_log": "log.csv"`` -> ``<out_dir>/log.csv``); any other relative path is
   resolved against the config file's folder. A field may carry a ``resolve`` function that maps
   the user's name to what is actually written or read (an earlier ``.pt`` name -> its safetensors file),
   and says so in a note;
6. (``load_config`` only, i.e. the scripts) every input must exist, checked before any model
   loads; the error names the key as the user wrote it and the path.

Every problem of steps 3-6 is collected and reported in one error, each line naming where the bad
value came from (the config file, ``--set`` or ``--root``), so one run shows all there is to fix.

Where each path came from (the config, ``--set``, a default, off) and every note are kept with the
config and written with it next to every output (``config_sources``, ``config_notes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from qwen_forensics.config.paths import (DEFAULT_ROOT, ROOT_ENV_VAR, ConfigError, ConfigMeta, PathContext, config_meta,
                                         effective_root, implied_root, input_paths, output_folder, relocate_path,
                                         resolve_paths)

IGNORED_KEYS = {"working_dir": "ignored: scripts resolve every path themselves and never chdir"}
# Written next to the values where a config is recorded; skipped when a recorded config is read back.
RECORD_KEYS = ("config_sources", "config_notes")
PATH_ROLES = ("in", "out", "out_dir")
# Re-exported from config_paths: scripts and the runner take everything config-related from here.
__all__ = ["DEFAULT_ROOT", "ROOT_ENV_VAR", "ConfigError", "ConfigMeta", "config_meta", "config_dict", "option",
           "effective_root", "relocate_path", "input_paths", "parse_config", "apply_overrides", "read_config_file",
           "build_arg_parser", "load_config", "load_config_and_paths", "cap_worker_count", "cap_workers", "usable_cores"]

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, path: str | None = None,
           resolve: Callable[..., Any] | None = None, factory: Any = dataclasses.MISSING,
           flag: str | None = None, flag_list: bool = False, flag_json: bool = False) -> Any:
    """A documented dataclass field.

    ``path``: "in", "out" or "out_dir" (see the module docstring). ``resolve(value, role, exists)``
    maps a path to the one really used and returns ``(path, note or None)``; with ``exists=True``
    (scripts) it must also check that an input is there, raising ``FileNotFoundError`` otherwise.
    ``flag``: a command-line option (``--export-submission DIR``) that sets this top-level string key, the
    same as ``--set key=DIR``; with ``flag_list`` it takes one or more values (``--perturb jpeg:90 blur:3``)
    and sets a list of strings; with ``flag_json`` its value is read as ``--set`` reads one (``--perturb-seed 3``
    sets an integer).
    """
    if path is not None and path not in PATH_ROLES:
        raise ValueError(f"path must be one of {PATH_ROLES}, got {path!r}")
    meta = {"help": help, "path": path, "resolve": resolve, "flag": flag, "flag_list": flag_list,
            "flag_json": flag_json}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict plus its loading record: what a checkpoint or output folder records."""
    out = dataclasses.asdict(cfg)
    meta = cfg.__dict__.get("_config_meta")
    if meta is not None:
        out["config_sources"] = dict(meta.sources)
        out["config_notes"] = list(meta.notes)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, where: str, meta: ConfigMeta) -> Any:
    """Validate ``value`` against annotation ``tp``; returns the value (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _check_type(value, arm, where, meta)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(_type_name(a) for a in args)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object with keys {sorted(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, where, meta)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, args[0], f"{where}[{i}]", meta) for i, v in enumerate(value)] if args else value
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


def _rename_aliases(cls: type, data: dict, where: str, meta: ConfigMeta) -> dict:
    """Map the earlier scripts' key names to this class's (``cls.ALIASES``), noting each."""
    aliases = getattr(cls, "ALIASES", {})
    data = dict(data)
    for old, new in aliases.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(f"{where}: both '{old}' (the earlier name) and '{new}' are set; keep one")
        data[new] = data.pop(old)
        meta.key_names[f"{where}.{new}"] = old
        meta.notes.append(f"'{old}' is the earlier name of '{new}'")
    return data


def _build(cls: type[T], data: dict, where: str, meta: ConfigMeta) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = _rename_aliases(cls, data, where, meta)
    if "." not in where:
        data = {k: v for k, v in data.items() if k not in RECORD_KEYS}
    for key in data:
        if key not in fields and key not in IGNORED_KEYS:
            meta.problems.append(_unknown_key(cls, key, f"{where}.{key}", sorted(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            try:
                kwargs[name] = _check_type(data[name], hints[name], f"{where}.{name}", meta)
            except ConfigError as err:
                meta.problems.append(str(err))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            meta.problems.append(f"{where}.{name}: required key is missing ({f.metadata.get('help', '')})")
    # Each config class checks its values in __post_init__, so a config built in Python is checked too.
    try:
        obj = cls(**kwargs)
    except (ConfigError, TypeError) as err:
        if isinstance(err, TypeError) and not meta.problems:
            raise
        # The object is still built, unchecked, so that its paths are checked in the same run. A
        # TypeError here is a missing required key, already recorded.
        if isinstance(err, ConfigError):
            prefix = where.split(".", 1)[1] + "." if "." in where else ""
            meta.problems += [f"{where.split('.', 1)[0]}.{prefix}{line}" for line in str(err).splitlines()]
        obj = _unchecked(cls, kwargs)
    obj.__dict__["_given_keys"] = set(data)
    return obj


def _unknown_key(cls: type, key: str, where: str, valid: list[str]) -> str:
    """One line for an unknown key: the close valid names, else every valid name (wrapped by the caller)."""
    aliases = sorted(getattr(cls, "ALIASES", {}))
    close = difflib.get_close_matches(key, [*valid, *aliases], n=3, cutoff=0.6)
    if close:
        return f"{where}: unknown key; did you mean {' or '.join(repr(c) for c in close)}?"
    listing = ", ".join(valid) + (f"; earlier names also accepted: {', '.join(aliases)}" if aliases else "")
    return f"{where}: unknown key. Valid keys:\n" + textwrap.fill(listing, width=100, initial_indent="      ",
                                                                   subsequent_indent="      ")


def _unchecked(cls: type[T], kwargs: dict) -> T:
    """``cls`` with ``kwargs`` and the defaults, without its ``__post_init__`` checks."""
    obj = cls.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            value = kwargs[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        object.__setattr__(obj, f.name, value)
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


def parse_config(cls: type[T], data: dict, *, overrides: list[str] = (), root: str | None = None,
                 base_dir: Path | None = None, check_inputs: bool = False, source: str = "the config") -> T:
    """Build a validated ``cls`` from a dict (used by :func:`load_config` and tests).

    ``check_inputs``: require every input path to exist (the scripts do; tests of parsing do not).
    ``source``: how the error names the dict's origin (the config file's name).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: the config must be a JSON object")
    meta = ConfigMeta(source=source)
    data = apply_overrides(data, list(overrides))
    for key, why in IGNORED_KEYS.items():
        if key in data:
            print(f"[config] '{key}' is {why}.", file=sys.stderr)
    cfg = _build(cls, data, cls.__name__, meta)
    overridden = {".".join(_parse_override(text)[0]) for text in overrides}
    ctx = PathContext(effective_root(root), base_dir, None, overridden, meta, check_inputs)
    if ctx.root is None:
        ctx.implied_root = implied_root(cfg, ctx)
    ctx.out_dir = output_folder(cfg, ctx)
    resolve_paths(cfg, ctx, "", cls.__name__)
    if meta.problems:
        raise ConfigError(_problem_list(cls.__name__, meta.problems, overridden, source))
    cfg.__dict__["_config_meta"] = meta
    return cfg


_KEY_RE = re.compile(r"^([A-Za-z_][\w.\[\]]*?)(?:[=:]| = )")


def _problem_list(cls_name: str, problems: list[str], overridden: set[str], source: str) -> str:
    """All problems, one per line, each naming its key and where its value came from."""
    lines = []
    for problem in problems:
        text = problem[len(cls_name) + 1:] if problem.startswith(cls_name + ".") else problem
        match = _KEY_RE.match(text)
        key = match.group(1) if match else ""
        if "(from " not in text:
            text += f"  (from --set {key}=...)" if key in overridden else f"  (from {source})"
        lines.append(f"  - {text}")
    count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
    return f"{count}:\n" + "\n".join(lines)


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
    parser.add_argument("--show-config", action="store_true",
                        help="print every key of this script's config with the value this run would use (the "
                             "file's, --set's or the default) as JSON, and exit: a complete file to edit")
    return parser


def load_config_and_paths(cls: type[T], *, description: str, default_config: Path | None = None,
                          argv: list[str] | None = None) -> tuple[T, str | None]:
    """:func:`load_config` plus the relocation root, for scripts that must relocate paths inside
    free-form dicts the typed layer cannot see (Task 2's training_args)."""
    parser = build_arg_parser(description, default_config)
    flagged = [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]
    for f in flagged:
        parser.add_argument(f.metadata["flag"], dest=f"flag_{f.name}", metavar="VALUE",
                            nargs="+" if f.metadata.get("flag_list") else None,
                            help=f"the config key {f.name}, as --set {f.name}=VALUE: {f.metadata['help']}")
    args = parser.parse_args(argv)

    def override(f) -> str:
        value = getattr(args, f"flag_{f.name}")
        return f"{f.name}={value if f.metadata.get('flag_json') else json.dumps(value)}"

    # A flag is one more override, after the --set ones: what the command line says last wins.
    overrides = [*args.overrides, *(override(f) for f in flagged if getattr(args, f"flag_{f.name}") is not None)]
    base_dir = Path(args.config).resolve().parent
    try:
        cfg = parse_config(cls, read_config_file(args.config), overrides=overrides, root=args.root,
                           base_dir=base_dir, check_inputs=not args.show_config, source=args.config)
    except ConfigError as err:
        raise SystemExit(f"config error (config file {args.config}): {err}\n"
                         f"(--show-config prints every key of this script with the value a run would use)") from None
    if args.show_config:
        values = {k: v for k, v in config_dict(cfg).items() if k not in RECORD_KEYS}
        print(json.dumps(values, indent=2, ensure_ascii=False))
        raise SystemExit(0)
    cap_workers(cfg)
    meta = config_meta(cfg)
    for note in meta.notes:
        print(f"[config] {note}", file=sys.stderr)
    if meta.output_line:
        print(f"[output] {meta.output_line}", file=sys.stderr)
    return cfg, effective_root(args.root)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container or ``taskset`` limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS): every core counts
        return os.cpu_count() or 1


def cap_worker_count(requested: int, what: str) -> tuple[int, str | None]:
    """``requested`` loader processes lowered to the usable cores, with the note saying so (None when
    unchanged); ``what`` names the setting in the note (``--num-workers 16``)."""
    cores = usable_cores()
    return (requested, None) if requested <= cores else (cores, _lowered(what, cores))


def _lowered(what: str, cores: int) -> str:
    return f"{what} lowered to {cores}: this machine gives the run {cores} CPU cores"


def cap_workers(cfg: Any) -> None:
    """Lower loader process counts above the usable cores to that count, with one note for all.

    The shipped configs ask for 8 workers (a GPU server); on a smaller machine more loader processes
    than cores only compete with the model for them, and torch warns about it on every loader."""
    cores = usable_cores()
    capped = []
    if isinstance(getattr(cfg, "num_workers", None), int) and cfg.num_workers > cores:
        capped.append(f"num_workers {cfg.num_workers}")
        cfg.num_workers = cores
    args = getattr(cfg, "training_args", None)
    if isinstance(args, dict) and isinstance(args.get("dataloader_num_workers"), int) \
            and args["dataloader_num_workers"] > cores:
        capped.append(f"training_args.dataloader_num_workers {args['dataloader_num_workers']}")
        args["dataloader_num_workers"] = cores
    if capped:
        config_meta(cfg).notes.append(_lowered(" and ".join(capped), cores))


def load_config(cls: type[T], *, description: str, default_config: Path | None = None,
                argv: list[str] | None = None) -> T:
    """Parse ``--config/--set/--root`` from ``argv`` and return the validated config (inputs checked)."""
    return load_config_and_paths(cls, description=description, default_config=default_config, argv=argv)[0]
