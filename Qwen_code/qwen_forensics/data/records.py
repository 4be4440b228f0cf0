"""Index records (`annotation.json`, `train_idx.json`, `val_idx.json`) and the clip name.

Our index file is a JSON list of ``{"image_path", "mask_path", "label"}`` with paths relative to the
data root. Fakes (label 1) name a mask image; reals (label 0) carry the image size ``"HxW"``
(height first) instead, meaning an all-zero mask. IMDLBenCo's formats (pairs and Tp/ + Gt/ folders,
``formats``) are read into the same Records, their paths absolute.

Parsing rejects only a file that is not an index at all (missing, not JSON, not a JSON list): one
error naming the file. A record that is wrong in itself (not an object, a missing key, a wrong JSON
type such as ``"label": "1"``) becomes a :class:`Record` carrying a ``defect`` message, and semantic
problems (label 2, a malformed size string, a fake without a mask path) stay representable, so that
`validate.validate_records` reports every problem of an index at once and the bad-sample policy can
skip any of them.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# BadIndex is raised by the readers in ``formats`` and stays importable from here, where callers met it first.
from qwen_forensics.data.formats import BadIndex as BadIndex
from qwen_forensics.data.formats import IndexEntry, read_index_source

REQUIRED_KEYS = ("image_path", "mask_path", "label")

_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_FRAME_SEP = "__frame"


def parse_size(text: str) -> tuple[int, int] | None:
    """Parse ``"HxW"`` (e.g. ``"720x1280"``) into ``(720, 1280)``; None if it is not a positive size."""
    match = _SIZE_RE.match(text)
    if match is None:
        return None
    h, w = int(match.group(1)), int(match.group(2))
    if h <= 0 or w <= 0:
        return None
    return h, w


def video_key(image_path: str) -> str:
    """The clip a frame comes from: the file name (no folder) before ``__frame``.

    ``trainingset2/image/3__<src>__<dst>__frame00128.jpg`` -> ``3__<src>__<dst>``. A name without
    ``__frame`` is its own clip (its stem), so stray stills never merge into one group.

    This is not the unit of leakage: ForgeryNet reuses one clip's footage under several clip names
    (other method numbers, the real clip itself); `leakage.video_groups` joins those.
    """
    name = os.path.basename(image_path)
    if _FRAME_SEP in name:
        return name.split(_FRAME_SEP, 1)[0]
    return os.path.splitext(name)[0]


@dataclass(frozen=True)
class Record:
    """One index entry.

    ``mask_path`` holds the raw ``mask_path`` value whenever it is not a size string (a fake's mask
    file, or a malformed value kept for the validation report); ``mask_size`` holds the parsed
    ``"HxW"`` of a real. ``index`` is the position in the index file, used in every message.

    ``defect`` says why the entry is not a readable record (``label "1" is a string: write 1``); such a
    record keeps the entry as written in ``raw`` and is never trained or evaluated on: validation
    reports it, the bad-sample policy fails or skips it. A record of a foreign index (``formats``) keeps
    its entry as written there in ``raw`` too. ``size_from_image``: a real whose all-zero mask has the
    image's own size (the foreign formats state no size).
    """

    image_path: str
    mask_path: str | None
    mask_size: tuple[int, int] | None
    label: int
    index: int
    defect: str | None = None
    raw: Any = field(default=None, compare=False, repr=False)
    size_from_image: bool = False

    @property
    def video(self) -> str:
        """The clip name (`video_key`). Splits and leakage checks use `leakage.video_groups` instead."""
        return video_key(self.image_path)

    def to_json(self) -> dict:
        """The record in the index-file format it was read from (a defective or foreign entry as it was
        written)."""
        if self.defect is not None or self.raw is not None:
            return self.raw
        if self.mask_size is not None:
            mask = f"{self.mask_size[0]}x{self.mask_size[1]}"
        else:
            mask = self.mask_path
        return {"image_path": self.image_path, "mask_path": mask, "label": self.label}


def _json_value(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _label_defect(label: object) -> str | None:
    """Why a JSON ``label`` value is not an integer, with the fix; None for an integer (0, 1, or a value
    `validate` reports as out of range). Nothing is coerced: ``"1"`` is a defect, not a 1."""
    if isinstance(label, bool):
        return f"label {_json_value(label)} is a boolean: write {int(label)}"
    if isinstance(label, int):
        return None
    if label is None:
        return "label is null: write 0 (real) or 1 (fake)"
    if isinstance(label, str):
        fix = label.strip() if label.strip() in ("0", "1") else "0 (real) or 1 (fake)"
        return f"label {_json_value(label)} is a string: write {fix}"
    if isinstance(label, float):
        fix = str(int(label)) if label in (0.0, 1.0) else "0 (real) or 1 (fake)"
        return f"label {_json_value(label)} is not an integer: write {fix}"
    return f"label {_json_value(label)} is a {type(label).__name__}: write 0 (real) or 1 (fake)"


def _entry_defect(obj: object) -> str | None:
    """Why one decoded index entry is not a readable record, with the fix; None if it is one."""
    if not isinstance(obj, dict):
        kind = "a list" if isinstance(obj, list) else _json_value(obj)
        return (f"expected an object {{\"image_path\", \"mask_path\", \"label\"}}, got {kind}: write the record "
                "as a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        return f"missing key(s) {', '.join(repr(k) for k in missing)}: every record needs {list(REQUIRED_KEYS)}"
    image_path, mask = obj["image_path"], obj["mask_path"]
    if not isinstance(image_path, str):
        return f"image_path {_json_value(image_path)} is not a string: write the image's path relative to data_root"
    if mask is not None and not isinstance(mask, str):
        return (f"mask_path {_json_value(mask)} is not a string: write the mask's path (fakes) or its size "
                '"HxW" (reals)')
    return _label_defect(obj["label"])


def record_from_json(obj: object, index: int) -> Record:
    """Build a Record from one decoded JSON entry; a defective entry becomes a Record with ``defect`` set."""
    defect = _entry_defect(obj)
    if defect is not None:
        image_path = obj.get("image_path") if isinstance(obj, dict) else None
        return Record(image_path=image_path if isinstance(image_path, str) else "", mask_path=None, mask_size=None,
                      label=-1, index=index, defect=defect, raw=obj)
    mask, label = obj["mask_path"], obj["label"]
    mask_size = parse_size(mask) if mask else None
    mask_path = None if (mask_size is not None or not mask) else mask
    return Record(image_path=obj["image_path"], mask_path=mask_path, mask_size=mask_size, label=label, index=index)


def record_from_entry(entry: IndexEntry, index: int) -> Record:
    """A Record from one entry of any index format (``formats.IndexEntry``)."""
    if entry.defect is not None:
        return Record(image_path="", mask_path=None, mask_size=None, label=-1, index=index, defect=entry.defect,
                      raw=entry.written)
    record = record_from_json(entry.value, index)
    if entry.written is None:
        return record
    return replace(record, raw=entry.written, size_from_image=entry.size_from_image)


@dataclass(frozen=True)
class Index:
    """An index read in its format (``formats``): the Records in order, and for a folder the masks no image
    claims and what the pairing decided."""
    path: Path
    format: str
    records: list[Record]
    unpaired_masks: list[str]
    notes: list[str]


def read_index(path: str | os.PathLike) -> Index:
    """Read an index in any format into Records, one per entry (defective entries included, see
    :func:`record_from_json`); a path that is not an index raises :class:`BadIndex`."""
    source = read_index_source(path)
    records = [record_from_entry(entry, i) for i, entry in enumerate(source.entries)]
    return Index(source.path, source.format, records, source.unpaired_masks, source.notes)


def load_index(path: str | os.PathLike) -> list[Record]:
    """The Records of an index in any format (:func:`read_index`)."""
    return read_index(path).records


def save_index(records: list[Record], path: str | os.PathLike) -> None:
    """Write Records back in the index-file format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class VideoOverlap:
    """Records of index B whose clip name (`Record.video`) also appears in index A."""

    records: tuple[Record, ...]
    videos: tuple[str, ...]
    total_videos_b: int

    @property
    def num_records(self) -> int:
        return len(self.records)

    @property
    def num_videos(self) -> int:
        return len(self.videos)


def video_overlap(a: list[Record], b: list[Record]) -> VideoOverlap:
    """Which records of ``b`` come from a clip name present in ``a``.

    Kept as the clip-name baseline; it misses footage that ForgeryNet reuses under other clip
    names. The leakage check is `leakage.check_leakage`.
    """
    videos_a = {r.video for r in a}
    leaked = tuple(r for r in b if r.video in videos_a)
    return VideoOverlap(
        records=leaked,
        videos=tuple(sorted({r.video for r in leaked})),
        total_videos_b=len({r.video for r in b}),
    )
