"""Files a reader never sees half of, the append-only metrics CSV, and a bounded background writer.

Every writer here writes to a temporary name in the destination folder (``.NAME.PID.tmp``) and
renames it with ``os.replace``: a run killed mid-write leaves at most such a temporary file, never
a truncated ``NAME``. Readers that resume work (map.py's batches) discard stale temporary files by
``TMP_SUFFIX``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` and rename ``tmp`` to ``path``; on any failure remove ``tmp`` and re-raise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_lines(path: str | os.PathLike, lines: Sequence[str]) -> Path:
    """Lines flushed to disk before the rename (map.py's batches must survive a power cut as whole files)."""
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_concat(path: str | os.PathLike, parts: Sequence[Path]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())

    return atomic_write(path, write)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if None in row:
                raise ValueError(
                    f"{path}: line {line_no} has more fields than the header; fix or move the file "
                    "before appending (it was left unchanged)"
                )
            rows.append(row)
    return header, rows


def append_csv_row(path: str | os.PathLike, row: Mapping[str, Any], leading_columns: Sequence[str]) -> None:
    """Append one run's ``row`` to the metrics CSV at ``path``.

    A new file gets the header ``leading_columns`` (the seed's columns, each required in ``row``)
    followed by the row's other keys in their order. If the file exists and the row brings keys
    its header lacks, the file is rewritten (atomically) with those columns appended, old rows
    keeping empty cells; existing columns are never reordered or dropped. Only one process may
    write (the main process under distributed runs).
    """
    path = Path(path)
    missing = [c for c in leading_columns if c not in row]
    if missing:
        raise ValueError(f"metrics row for {path} lacks the required leading columns {missing}")
    new_columns = list(dict.fromkeys([*leading_columns, *row.keys()]))
    if path.exists() and path.stat().st_size > 0:
        header, rows = _read_csv(path)
        if not header:
            raise ValueError(f"{path} exists but has no header line; fix or move it before appending")
    else:
        header, rows = [], []
    extra = [c for c in new_columns if c not in header]
    out_row = {k: "" if v is None else v for k, v in row.items()}
    if header and not extra:
        with path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerow(out_row)
        return
    columns = header + extra

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow(out_row)

    atomic_write(path, write)


class BackgroundWriter:
    """Writes files on a few threads while the caller goes on (image encoding and file I/O release the
    GIL). At most ``bound`` jobs wait: a caller that submits faster than the disk takes them waits
    rather than piling up pictures in memory. :meth:`close` waits for every job and raises the first
    error one of them hit."""

    def __init__(self, workers: int | None = None, bound: int | None = None):
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="writer")
        self._slots = threading.BoundedSemaphore(bound or 4 * self.workers)
        self._futures: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        self._slots.acquire()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)
        return future

    def wait(self) -> None:
        """Wait for every job submitted so far (raising the first error); more may be submitted after."""
        for future in self._futures:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def printable_json(value: Any, indent: int = 1) -> str:
    """JSON for the terminal: NaN and infinities (a metric without a validation set, say) become null,
    since ``NaN`` is no JSON and reads like a failure."""
    return json.dumps(_finite(value), indent=indent, ensure_ascii=False, default=str)

