"""Up-front validation of a whole index, and the bad-sample policy.

Every record is checked before training or evaluation starts and every problem is collected, so one
run shows all that is wrong with a data set instead of the first crash hours in.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from accelerate.utils import gather_object
from PIL import Image, UnidentifiedImageError

from qwen_forensics.data.formats import FORMAT_NAMES, RECORDS
from qwen_forensics.data.records import BadIndex, Index, Record, read_index

# Problem kinds (short codes used in reports and skipped_records.json).
EMPTY_INDEX = "empty_index"
BAD_RECORD = "bad_record"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
TRUNCATED_IMAGE = "truncated_image"
MISSING_MASK = "missing_mask"
UNREADABLE_MASK = "unreadable_mask"
TRUNCATED_MASK = "truncated_mask"
BAD_SIZE_STRING = "bad_hxw"
BAD_LABEL = "bad_label"
SIZE_MISMATCH = "size_mismatch"
DUPLICATE = "duplicate"
UNPAIRED_MASK = "unpaired_mask"  # a mask of a Tp/ + Gt/ folder that no image claims (index-wide)

POLICIES = ("fail", "skip")
SKIPPED_FILE = "skipped_records.json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record (``index`` None for index-wide problems)."""

    index: int | None
    image_path: str
    kind: str
    message: str

    def __str__(self) -> str:
        where = "index" if self.index is None else f"record {self.index} ({self.image_path})"
        return f"[{self.kind}] {where}: {self.message}"


@dataclass
class ValidationReport:
    """Everything learned about an index: problems, counts, label balance, size histogram.

    ``size_histogram`` counts ``"HxW"`` image sizes: read from the files when files were checked,
    otherwise only the reals' ``"HxW"`` strings are known (fakes carry no size in the index).
    ``num_skipped`` is filled in by `apply_bad_sample_policy`, for the metrics. ``format``: the index's
    format (``formats``).
    """

    source: str
    records: list[Record]
    problems: list[Problem]
    label_counts: dict[int, int]
    size_histogram: dict[str, int]
    image_sizes: dict[int, tuple[int, int]]
    files_checked: bool
    num_skipped: int = 0
    format: str = RECORDS

    @property
    def num_records(self) -> int:
        return len(self.records)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_indices(self) -> set[int]:
        return {p.index for p in self.problems if p.index is not None}

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, top_sizes: int = 10) -> str:
        """Human-readable report (the text check_data.py prints)."""
        n = self.num_records
        lines = [f"index: {self.source}", f"format: {FORMAT_NAMES[self.format]}",
                 f"records: {n}" + ("" if self.files_checked else " (index only, files not checked)")]
        for label, count in sorted(self.label_counts.items()):
            share = 100.0 * count / n if n else 0.0
            lines.append(f"  label {label}: {count} ({share:.1f}%)")
        unreadable = sum(r.defect is not None for r in self.records)
        if unreadable:
            lines.append(f"  not readable as records: {unreadable} (listed under problems as {BAD_RECORD})")
        hist = sorted(self.size_histogram.items(), key=lambda kv: (-kv[1], kv[0]))
        basis = "image files" if self.files_checked else "reals' HxW"
        lines.append(f"sizes ({basis}, {len(hist)} distinct, top {min(top_sizes, len(hist))}):")
        lines.extend(f"  {size}: {count}" for size, count in hist[:top_sizes])
        if self.ok:
            lines.append("problems: none")
        else:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.problem_counts().items()))
            lines.append(f"problems: {len(self.problems)} in {len(self.bad_indices)} records ({counts})")
            lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "num_records": self.num_records,
            "files_checked": self.files_checked,
            "label_counts": {str(k): v for k, v in sorted(self.label_counts.items())},
            "size_histogram": dict(sorted(self.size_histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
            "problem_counts": self.problem_counts(),
            "problems": [vars(p) for p in self.problems],
            "num_skipped": self.num_skipped,
        }


def inspect_image(path: Path) -> tuple[tuple[int, int] | None, str | None, str]:
    """Return ``((h, w), None, "")`` for a good file, else ``(size_or_None, failure, detail)``.

    The size comes from the header (cheap); the full decode is what catches a truncated JPEG. JPEG
    `draft` decodes at 1/8 scale, which still reads the whole entropy-coded stream (so truncation
    is still detected) while skipping most of the inverse DCT and colour work.
    """
    if not path.is_file():
        return None, "missing", f"file {path} does not exist"
    try:
        with Image.open(path) as img:
            w, h = img.size
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            try:
                img.load()
            except (OSError, SyntaxError) as err:
                return (h, w), "truncated", f"{path} fails to decode fully ({err})"
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        return None, "unreadable", f"{path} cannot be read as an image ({err})"
    return (h, w), None, ""


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _default_workers() -> int:
    # Decoding releases the GIL, so threads overlap file reads and decodes.
    return min(8, (os.cpu_count() or 1) * 2)


Inspection = tuple[tuple[int, int] | None, str | None, str]


def inspect_images(paths: list[Path], workers: int | None = None) -> list[Inspection]:
    """:func:`inspect_image` of every path, in order, on ``workers`` threads."""
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        return list(pool.map(inspect_image, paths))


def shared_inspection(accelerator, workers: int | None = None) -> Callable[[list[Path]], list[Inspection]]:
    """The ``inspect`` of :func:`validate_records` for N processes that all need the same report: each
    reads and decodes every N-th file, and every process receives all the results, in order. A whole
    index is then read once in all, not once per process (8 processes of a host decoding the same
    2.9 million files would each take as long as one process alone, competing for its disks and cores)."""
    def inspect(paths: list[Path]) -> list[Inspection]:
        count, rank = accelerator.num_processes, accelerator.process_index
        results: list[Inspection | None] = [None] * len(paths)
        for process, part in enumerate(gather_object([inspect_images(paths[rank::count], workers)])):
            results[process::count] = part
        return results

    return inspect


def validate_records(
    records: list[Record],
    data_root: str | os.PathLike,
    *,
    check_files: bool = True,
    source: str = "<index>",
    workers: int | None = None,
    inspect: Callable[[list[Path]], list[Inspection]] | None = None,
) -> ValidationReport:
    """Check the whole index and collect every problem.

    ``check_files=False`` checks only what the index itself says (labels, ``"HxW"`` strings, fake
    records naming a mask, duplicates, emptiness); use it for an index whose images are not here.
    ``source`` (the index file name) is carried into every message. ``inspect``: what reads the
    files (default :func:`inspect_images` on ``workers`` threads; :func:`shared_inspection` under
    several processes).
    """
    data_root = Path(data_root)
    if len({r.index for r in records}) != len(records):
        raise ValueError(f"{source}: record indices are not unique; validate one index file at a time (load_index numbers records by position).")
    problems: list[Problem] = []

    def add(rec: Record | None, kind: str, message: str) -> None:
        problems.append(Problem(None if rec is None else rec.index, "" if rec is None else rec.image_path, kind, message))

    if not records:
        add(None, EMPTY_INDEX, f"{source} contains no records; point the config at a non-empty index.")

    # An entry that is not a readable record is reported once, as it is, and not examined further.
    for rec in records:
        if rec.defect is not None:
            add(rec, BAD_RECORD, rec.defect)
    records_ok = [r for r in records if r.defect is None]

    first_seen: dict[str, Record] = {}
    for rec in records_ok:
        if rec.label not in (0, 1):
            add(rec, BAD_LABEL, f"label {rec.label!r} is not 0 (real) or 1 (fake)")
        if rec.label == 0 and rec.mask_size is None and not rec.size_from_image:
            add(rec, BAD_SIZE_STRING, f'real record needs mask_path "HxW" (height x width, e.g. "720x1280"), got {rec.mask_path!r}')
        if rec.label == 1 and rec.mask_path is None:
            got = _fmt(rec.mask_size) if rec.mask_size else None
            add(rec, MISSING_MASK, f"fake record needs mask_path naming a mask image, got {got!r}")
        if rec.image_path == "":
            add(rec, MISSING_IMAGE, "image_path is empty")
        earlier = first_seen.get(rec.image_path)
        if earlier is not None and rec.image_path:
            clash = "" if earlier.label == rec.label else f" with a different label ({earlier.label} vs {rec.label})"
            add(rec, DUPLICATE, f"same image_path as record {earlier.index}{clash}")
        else:
            first_seen.setdefault(rec.image_path, rec)

    image_sizes: dict[int, tuple[int, int]] = {}
    if check_files:
        to_check = [r for r in records_ok if r.image_path]
        fake_masks = [r for r in records_ok if r.label == 1 and r.mask_path]
        paths = [data_root / r.image_path for r in to_check] + [data_root / r.mask_path for r in fake_masks]
        results = inspect(paths) if inspect is not None else inspect_images(paths, workers)
        image_result = dict(zip((r.index for r in to_check), results[: len(to_check)]))
        mask_result = dict(zip((r.index for r in fake_masks), results[len(to_check):]))
        image_kinds = {"missing": MISSING_IMAGE, "unreadable": UNREADABLE_IMAGE, "truncated": TRUNCATED_IMAGE}
        mask_kinds = {"missing": MISSING_MASK, "unreadable": UNREADABLE_MASK, "truncated": TRUNCATED_MASK}
        for rec in records_ok:
            size, failure, detail = image_result.get(rec.index, (None, None, ""))
            mask_size, mask_failure, mask_detail = mask_result.get(rec.index, (None, None, ""))
            if failure is not None:
                add(rec, image_kinds[failure], detail)
            if mask_failure is not None:
                add(rec, mask_kinds[mask_failure], mask_detail)
            if size is None:
                continue
            image_sizes[rec.index] = size
            if rec.label == 0 and rec.mask_size is not None and rec.mask_size != size:
                add(rec, SIZE_MISMATCH, f'mask_path says "{_fmt(rec.mask_size)}" but the image is {_fmt(size)} (HxW)')
            if mask_size is not None and mask_size != size:
                add(rec, SIZE_MISMATCH, f"mask {rec.mask_path} is {_fmt(mask_size)} but the image is {_fmt(size)} (HxW)")
        size_histogram = Counter(_fmt(s) for s in image_sizes.values())
    else:
        size_histogram = Counter(_fmt(r.mask_size) for r in records_ok if r.label == 0 and r.mask_size is not None)

    problems.sort(key=lambda p: (-1 if p.index is None else p.index))
    return ValidationReport(
        source=source,
        records=list(records),
        problems=problems,
        label_counts=dict(Counter(r.label for r in records_ok)),
        size_histogram=dict(size_histogram),
        image_sizes=image_sizes,
        files_checked=check_files,
    )


def validate_index(index: Index, data_root: str | os.PathLike, *, check_files: bool = True,
                   workers: int | None = None,
                   inspect: Callable[[list[Path]], list[Inspection]] | None = None) -> ValidationReport:
    """:func:`validate_records` of an index read in its format (``records.read_index``): its masks that no
    image claims are index-wide problems too, and the report names the format."""
    report = validate_records(index.records, data_root, check_files=check_files, source=str(index.path),
                              workers=workers, inspect=inspect)
    unpaired = [Problem(None, "", UNPAIRED_MASK, f"mask {mask} belongs to no image (no image of that stem, "
                        "without its suffix, in Tp/): add the image or move the mask out")
                for mask in index.unpaired_masks]
    report.problems[:0] = unpaired
    report.format = index.format
    return report


def skipped_listing(report: ValidationReport) -> dict:
    """What ``skipped_records.json`` holds for a report: every bad record with its reasons, and the
    index-wide problems (a folder's unpaired masks) under ``index_problems``."""
    reasons: dict[int, list[dict]] = {}
    for p in report.problems:
        if p.index is not None:
            reasons.setdefault(p.index, []).append({"kind": p.kind, "message": p.message})
    bad = report.bad_indices
    skipped = [{"index": r.index, "record": r.to_json(), "problems": reasons[r.index]}
               for r in report.records if r.index in bad]
    return {"source": report.source, "format": report.format, "num_skipped": len(skipped), "skipped": skipped,
            "index_problems": [vars(p) for p in report.problems if p.index is None]}


def write_skipped_listing(listing: dict, out_dir: str | os.PathLike) -> Path:
    """Write :func:`skipped_listing` as ``out_dir/skipped_records.json``; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SKIPPED_FILE
    path.write_text(json.dumps(listing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def apply_bad_sample_policy(report: ValidationReport, policy: str,
                            out_dir: str | os.PathLike | None) -> list[Record]:
    """Act on a report: ``"fail"`` stops listing every problem; ``"skip"`` drops bad records.

    With ``"skip"`` the dropped records and their reasons go to ``out_dir/skipped_records.json``
    (:func:`skipped_listing`; written even when nothing was skipped, as evidence; ``out_dir`` None:
    not written here, as :func:`load_split` defers it) and ``report.num_skipped`` is set.
    Either way an index that leaves no usable record stops the run. Stopping is :class:`BadIndex`
    (the report as its message, no traceback).
    """
    if policy not in POLICIES:
        raise ValueError(f"on_bad_sample must be one of {list(POLICIES)}, got {policy!r}.")
    if policy == "fail" and not report.ok:
        raise BadIndex(
            f"{report.summary()}\n"
            f"stopped: {len(report.problems)} problem(s) in {len(report.bad_indices) or 1} record(s) of "
            f"{report.source}, nothing was loaded. Fix the index (python Qwen_code/check_data.py shows this "
            f'report), or set on_bad_sample "skip" to train/evaluate without these records (they are then listed '
            f"in {SKIPPED_FILE} and counted as num_skipped)."
        )
    bad = report.bad_indices
    good = [r for r in report.records if r.index not in bad]
    if policy == "skip":
        report.num_skipped = len(report.records) - len(good)
        if out_dir is not None:
            write_skipped_listing(skipped_listing(report), out_dir)
    if not good:
        raise BadIndex(f"{report.summary()}\nstopped: {report.source} has no usable record left "
                       f"({len(report.problems)} problem(s)); fix the index.")
    return good


@dataclass(frozen=True)
class LoadedSplit:
    """An index ready to evaluate or train on: its usable records, how many bad ones the policy skipped
    (evaluations report it with their metrics) and its format (``formats``; in every evaluation CSV row).
    ``listing``: what :meth:`write_skipped` writes (None unless the policy was ``"skip"``)."""
    records: list[Record]
    skipped: int
    format: str
    source: str = ""
    listing: dict | None = None

    def write_skipped(self, skip_dir: str | os.PathLike, accelerator) -> None:
        """List the skipped records in ``skip_dir/skipped_records.json`` (main process; under
        ``on_bad_sample: skip`` only). Called once the run's output folder is opened, so an index that
        stops the run never moves an earlier run's outputs aside."""
        if self.listing is None:
            return
        if accelerator.is_main_process:
            path = write_skipped_listing(self.listing, skip_dir)
        else:
            path = Path(skip_dir) / SKIPPED_FILE
        if self.skipped:
            accelerator.print(f"{self.source}: skipped {self.skipped} bad record(s), listed in {path}")


def load_split(index_path: str, data_root: str, policy: str, accelerator) -> LoadedSplit:
    """Read an index in its format, printing which, and validate it whole up front; fail listing every
    problem, or skip them. Under several processes each reads its share of the files and all receive
    the whole report (:func:`shared_inspection`), so all decide alike. Nothing is written: the skipped
    records are listed by :meth:`LoadedSplit.write_skipped` once the run has started."""
    index = read_index(index_path)
    accelerator.print(f"[data] {index_path}: {FORMAT_NAMES[index.format]}; {len(index.records)} entries")
    for note in index.notes:
        accelerator.print(f"[data] {index_path}: {note}")
    report = validate_index(index, data_root, inspect=shared_inspection(accelerator)
                            if accelerator.num_processes > 1 else None)
    good = apply_bad_sample_policy(report, policy, None)
    return LoadedSplit(good, report.num_skipped, index.format, index_path,
                       skipped_listing(report) if policy == "skip" else None)
