"""Index records (`annotation.json`, `train_idx.json`, `val_idx.json`) and the clip name.

An index file is a JSON list of ``{"image_path", "mask_path", "label"}`` with paths relative to the
data root. Fakes (label 1) name a mask image; reals (label 0) carry the image size ``"HxW"``
(height first) instead, meaning an all-zero mask.

Parsing here only rejects what makes a record unreadable as a record (not a list, missing key,
wrong JSON type). Semantic problems (label 2, a malformed size string, a fake without a mask path)
stay representable so that `validate.validate_records` can report every problem of an index at once.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

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
    """

    image_path: str
    mask_path: str | None
    mask_size: tuple[int, int] | None
    label: int
    index: int

    @property
    def video(self) -> str:
        """The clip name (`video_key`). Splits and leakage checks use `leakage.video_groups` instead."""
        return video_key(self.image_path)

    def to_json(self) -> dict:
        """The record in the index-file format it was read from."""
        if self.mask_size is not None:
            mask = f"{self.mask_size[0]}x{self.mask_size[1]}"
        else:
            mask = self.mask_path
        return {"image_path": self.image_path, "mask_path": mask, "label": self.label}


def _structure_error(source: str, number: int | None, problem: str) -> ValueError:
    where = f"{source}" if number is None else f"{source}, record {number}"
    return ValueError(
        f"{where}: {problem}. Each record must be an object "
        '{"image_path": "<dir>/image/X.jpg", "mask_path": "<dir>/spatial_localize/X.jpg" or "HxW", '
        '"label": 0 or 1}; fix the index file.'
    )


def record_from_json(obj: object, index: int, source: str = "<index>") -> Record:
    """Build a Record from one decoded JSON entry (structural checks only)."""
    if not isinstance(obj, dict):
        raise _structure_error(source, index, f"expected an object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise _structure_error(source, index, f"missing key(s) {missing}")
    image_path, mask, label = obj["image_path"], obj["mask_path"], obj["label"]
    if not isinstance(image_path, str):
        raise _structure_error(source, index, f"image_path must be a string, got {image_path!r}")
    if mask is not None and not isinstance(mask, str):
        raise _structure_error(source, index, f"mask_path must be a string or null, got {mask!r}")
    # bool is an int subclass; true/false in JSON is a type error, not a label.
    if isinstance(label, bool) or not isinstance(label, int):
        raise _structure_error(source, index, f"label must be an integer, got {label!r}")
    mask_size = parse_size(mask) if mask else None
    mask_path = None if (mask_size is not None or not mask) else mask
    return Record(image_path=image_path, mask_path=mask_path, mask_size=mask_size, label=label, index=index)


def load_index(path: str | os.PathLike) -> list[Record]:
    """Read an index file into Records; structural errors raise ValueError naming file and record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist; check the annotation path in the config.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); fix the index file.") from err
    if not isinstance(data, list):
        raise _structure_error(str(path), None, f"the top level must be a list of records, got {type(data).__name__}")
    return [record_from_json(obj, i, str(path)) for i, obj in enumerate(data)]


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
