"""One run per output folder: an earlier run's files are moved aside, never mixed with or overwritten.

The user's configs name fixed output folders, so every experiment reruns into the same one. A new run
(not a resume) first moves the earlier run's files into ``previous_runs/<its start time>/`` inside that
folder and says so in one line; the fixed paths the evaluation configs name then always hold the
latest run, ``best_*`` and ``final`` are chosen within one run, and nothing is lost.

What counts as a run's files: the output names the script declares (``epoch_*``, ``report.html``,
its checkpoint names, ...), recorded with the run in ``run_manifest.json`` (run id, script, start
time, config hash, the config itself). Only entries matching those names move: never an input of
the new run (a checkpoint it evaluates, the data), never an append-only CSV (training log, metrics
CSV: their rows carry ``run_id`` and ``config_hash``, :meth:`Run.columns`, so runs appended to one
file can be told apart), never anything the scripts did not write. A folder written before manifests
existed is treated the same way by the new run's declared names.

A resume continues its own run (same ``run_id``) and refuses a folder whose recorded config differs
in anything but the keys a resume may change (a config class's ``RESUME_MAY_CHANGE``), naming them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qwen_forensics.config.loading import RECORD_KEYS, config_dict, input_paths
from qwen_forensics.files import atomic_write_text

MANIFEST_NAME = "run_manifest.json"
PREVIOUS_DIR = "previous_runs"
_STAMP = "%Y-%m-%d_%H-%M-%S"


@dataclass(frozen=True)
class Run:
    """This run: its id and config hash (for every appended CSV row) and its output folder."""
    run_id: str
    config_hash: str
    folder: Path

    def columns(self) -> dict[str, str]:
        return {"run_id": self.run_id, "config_hash": self.config_hash}


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_values(cfg: Any) -> dict[str, Any]:
    """The resolved config as ``resolved_config.json`` holds it, without the loading record."""
    return {k: v for k, v in config_dict(cfg).items() if k not in RECORD_KEYS}


def config_hash(values: Mapping[str, Any], ignore: Sequence[str] = ()) -> str:
    """First 12 hex digits of the SHA-256 of the config values (canonical JSON), ``ignore``d keys
    (dotted, e.g. ``training_args.max_steps``) left out: a resumed run keeps its hash."""
    kept = {k: v for k, v in _flatten(values).items() if k not in set(ignore)}
    text = json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _new_run_id(started: datetime) -> str:
    return f"{started.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}); it records the run in {folder}. Move it aside "
                         "(the folder's files are then treated as an earlier run's) and start again") from None
    return manifest if isinstance(manifest, dict) else None


def _touches(entry: Path, protected: Sequence[Path]) -> bool:
    """Whether ``entry`` is, or holds, or lies inside one of the ``protected`` paths."""
    for path in protected:
        if entry == path or path.is_relative_to(entry) or entry.is_relative_to(path):
            return True
    return False


def _entries(folder: Path, outputs: Sequence[str]) -> list[Path]:
    """The paths of the declared outputs that exist: top-level entries of ``folder`` for names and
    patterns (``final/adapter`` moves ``final``), the path itself for an absolute path outside it."""
    found: dict[Path, None] = {}
    listing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for output in outputs:
        path = Path(output)
        if path.is_absolute() and not path.is_relative_to(folder):
            if path.exists():
                found[path] = None
            continue
        relative = path.relative_to(folder) if path.is_absolute() else path
        top = relative.parts[0]
        for name in fnmatch.filter(listing, top):
            found[folder / name] = None
    return [p for p in found if p.name not in (MANIFEST_NAME, PREVIOUS_DIR)]


def _free_dir(base: Path) -> Path:
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def _move_aside(folder: Path, entries: Sequence[Path], label: str) -> list[Path]:
    """Move ``entries`` into a new ``previous_runs/<label>/`` of their folder (``folder``, or for an
    output outside it, that output's parent); returns the dated folders, ``folder``'s first."""
    dated: dict[Path, Path] = {}
    for entry in sorted(entries, key=lambda e: e.parent != folder):
        if entry.parent not in dated:
            dated[entry.parent] = _free_dir(entry.parent / PREVIOUS_DIR / label)
            dated[entry.parent].mkdir(parents=True)
        shutil.move(str(entry), str(dated[entry.parent] / entry.name))
    return list(dated.values())


def _earlier_label(manifest: dict | None, entries: Sequence[Path]) -> str:
    if manifest and isinstance(manifest.get("started"), str):
        try:
            return datetime.fromisoformat(manifest["started"]).strftime(_STAMP)
        except ValueError:
            pass
    newest = max(p.stat().st_mtime for p in entries)
    return datetime.fromtimestamp(newest).strftime(_STAMP)


def _check_resume(manifest: dict, values: Mapping[str, Any], may_change: Sequence[str], folder: Path) -> None:
    recorded = manifest.get("config")
    if not isinstance(recorded, Mapping):
        return
    old, new = _flatten(recorded), _flatten(values)
    changed = sorted(k for k in set(old) | set(new) if k not in may_change and old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise SystemExit(f"resume refused: {folder} holds run {manifest.get('run_id')} whose config differs in "
                         f"{changed} ({shown}{more}). A resume may change only {sorted(may_change)}: restore the "
                         "others, or start a new run (no resume; the earlier run is then moved to "
                         f"{PREVIOUS_DIR}/)")


def start_run(folder: str | os.PathLike, script: str, values: Mapping[str, Any], outputs: Sequence[str | os.PathLike],
              *, keep: Sequence[str | os.PathLike] = (), resume: bool = False, may_change: Sequence[str] = (),
              say: Callable[[str], None] = print) -> Run:
    """Open ``folder`` for a run of ``script`` with config ``values`` (see the module doc).

    ``outputs``: what the run writes there (names, ``fnmatch`` patterns, or absolute paths, also
    outside the folder); ``keep``: paths never moved (the run's inputs and the CSVs it appends to).
    Main process only; the others wait and read the id with :func:`current_run`.
    """
    folder = Path(folder).resolve()
    started = datetime.now()
    outputs = [str(Path(o).resolve()) if Path(o).is_absolute() else str(o) for o in outputs]
    digest = config_hash(values, may_change)
    manifest = read_manifest(folder)
    run_id = None
    if resume:
        if manifest is None:
            say(f"[output] resume: {folder} records no run ({MANIFEST_NAME}); continuing as a new run id")
        else:
            _check_resume(manifest, values, may_change, folder)
            run_id = manifest.get("run_id")
            started = datetime.fromisoformat(manifest["started"]) if manifest.get("started") else started
    else:
        # The earlier run's names inside the folder, and whatever this run is about to write (also outside
        # it): an earlier run's output elsewhere that this run does not write stays where it is.
        recorded = [o for o in (manifest or {}).get("outputs") or []
                    if not Path(o).is_absolute() or Path(o).is_relative_to(folder)]
        earlier = list(dict.fromkeys([*outputs, *recorded]))
        protected = [Path(p).resolve() for p in keep]
        entries = [e for e in _entries(folder, earlier) if not _touches(e, protected)]
        if entries:
            label = _earlier_label(manifest, entries)
            if manifest is not None:
                entries.append(folder / MANIFEST_NAME)
            dated = _move_aside(folder, entries, label)
            who = (f"run {manifest.get('run_id')} ({manifest.get('script')}, started {manifest.get('started')})"
                   if manifest else "an earlier run (no run manifest)")
            say(f"[output] {folder} held {who}: its {len(entries)} files/folders moved to "
                f"{', '.join(map(str, dated))}")
    run = Run(run_id or _new_run_id(started), digest, folder)
    record = {"run_id": run.run_id, "script": script, "started": started.isoformat(timespec="seconds"),
              "config_hash": digest, "outputs": outputs, "config": values}
    if resume and manifest is not None:
        record["resumed"] = [*manifest.get("resumed", []), datetime.now().isoformat(timespec="seconds")]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")
    say(f"[output] run {run.run_id} (config {digest}){' resumed' if resume and manifest else ''}: {folder}")
    return run


def current_run(folder: str | os.PathLike) -> Run:
    """The run :func:`start_run` opened in ``folder`` (for the processes that did not open it)."""
    folder = Path(folder).resolve()
    manifest = read_manifest(folder) or {}
    return Run(manifest.get("run_id", ""), manifest.get("config_hash", ""), folder)


def start_config_run(cfg: Any, script: str, outputs: Sequence[str | os.PathLike], *,
                     appended: Sequence[str | os.PathLike] = (), resume: bool = False, accelerator=None,
                     say: Callable[[str], None] = print) -> Run:
    """:func:`start_run` for a script's config: its output folder, its values, its inputs kept in place,
    its class's ``RESUME_MAY_CHANGE``. With an ``accelerator`` the main process opens the run while the
    others wait, then all return the same run."""
    folder = getattr(cfg, type(cfg).OUTPUT_DIR)
    keep = [*input_paths(cfg).values(), *appended]
    may_change = getattr(type(cfg), "RESUME_MAY_CHANGE", ())
    if accelerator is None or accelerator.is_main_process:
        run = start_run(folder, script, config_values(cfg), outputs, keep=keep, resume=resume, may_change=may_change,
                        say=say)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            run = current_run(folder)
    return run
