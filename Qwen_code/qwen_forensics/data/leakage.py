"""Video groups (what ForgeryNet reuses across clips) and the train/val leakage check.

ForgeryNet reuses footage under different file names. A fake ``{method}__{src}__{dst}__frame{N}``
is made from the target clip ``dst``, which is often also in the set as the real
``image__{k}__{dst}__frame{N}``; the same (src, dst) pair comes back under several method numbers;
and in identity swaps the source ``src`` is itself a real clip of the set. The clip name
(`Record.video`, the file name before ``__frame``) keeps all of these apart, so a split by clip name
still puts the same footage on both sides. A *video group* joins them.

The rule (union-find over ids, computed over all the records passed in):

* a real links its id. ``k`` is ignored: it is a property of the id (in the user's index each of
  the 3,336 real ids has exactly one ``k``, 16..19), so it adds nothing;
* a fake links its target id ``dst`` always, and its source id ``src`` only when ``src`` is itself
  a clip of the records, i.e. the id of a real or the target of some fake;
* any other name links its clip name, which keeps the old behaviour for names of another data set.

Records that link a common id are in one group, transitively. The group's label is the smallest
clip name in it, so labels do not depend on record order.

Why ``src`` links only when it is a clip: some methods put one donor identity into hundreds of
target clips (method 1 uses a single source id for all its 386 fakes over 333 targets; methods 7,
10 and 14 use 2, 3 and 10 source ids for 119, 178 and 400 fakes). Those donor ids never occur as a
real or as a target, so no frame of the donor is in the data. Linking them anyway chains unrelated
target clips together: on the user's train+val (10,000 records) linking every id gives one group of
3,443 records (34%) built on those donors, and a 15% val split would have to avoid a third of the
data at once. With the rule above the largest group has 16 records (4,232 groups), and everything
that does share footage still joins: a fake and the real of its target, one pair under several
methods, and a swap whose source is a real clip of the set.

Adding records only merges groups (more ids become clips), so groups computed over train+val
together are what a check must compare; `check_leakage` does that.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

from qwen_forensics.data.records import Record, VideoOverlap, video_overlap

_FAKE_CLIP = re.compile(r"^(\d+)__([0-9a-f]{32})__([0-9a-f]{32})$", re.IGNORECASE)
_REAL_CLIP = re.compile(r"^image__(\d+)__([0-9a-f]{32})$", re.IGNORECASE)

RULE = ("video group = records linked by a shared ForgeryNet id (a real's id, a fake's target id, and "
        "its source id when that source is itself a clip of the data); other names group by clip name")


@dataclass(frozen=True)
class ClipIds:
    """What one clip name can link by: its ``target`` token always, its ``source`` token maybe.

    Tokens are namespaced (``id:<hex>`` for ForgeryNet ids, ``clip:<name>`` for other names) so a
    clip called like a hex id never collides with one.
    """

    target: str
    source: str | None = None


def clip_ids(clip: str) -> ClipIds:
    """Parse a clip name (`Record.video`) into the tokens it may link by."""
    fake = _FAKE_CLIP.match(clip)
    if fake is not None:
        return ClipIds(target=f"id:{fake.group(3).lower()}", source=f"id:{fake.group(2).lower()}")
    real = _REAL_CLIP.match(clip)
    if real is not None:
        return ClipIds(target=f"id:{real.group(2).lower()}")
    return ClipIds(target=f"clip:{clip}")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        # Path compression keeps repeated finds cheap on long chains.
        while item != root:
            item, self.parent[item] = self.parent[item], root
        return root

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_a] = root_b


def video_groups(records: Iterable[Record]) -> dict[str, str]:
    """Clip name -> video group label, for every clip of ``records`` (the rule is in the module doc).

    Pass every record that is to be compared (train and val together): whether a source id links
    depends on the whole set.
    """
    clips = {r.video: clip_ids(r.video) for r in records}
    clip_tokens = {ids.target for ids in clips.values()}
    forest = _UnionFind()
    for clip, ids in clips.items():
        forest.union(f"name:{clip}", ids.target)
        if ids.source is not None and ids.source in clip_tokens:
            forest.union(f"name:{clip}", ids.source)
    label_of_root: dict[str, str] = {}
    for clip in sorted(clips):
        label_of_root.setdefault(forest.find(f"name:{clip}"), clip)
    return {clip: label_of_root[forest.find(f"name:{clip}")] for clip in clips}


@dataclass(frozen=True)
class OverlapGroup:
    """One video group with records on both sides."""

    label: str
    train_clips: tuple[str, ...]
    val_clips: tuple[str, ...]
    num_train_records: int
    num_val_records: int

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "num_train_records": self.num_train_records,
            "num_val_records": self.num_val_records,
            "train_clips": list(self.train_clips),
            "val_clips": list(self.val_clips),
        }


@dataclass(frozen=True)
class LeakageReport:
    """Val records whose video group also has train records (`check_leakage`).

    ``groups`` lists the overlapping groups, most val records first; ``records`` the val records in
    them, in val order. ``by_clip_name`` is the same check with the clip name as the key (what the
    project used before video groups), for comparison.
    """

    train_name: str
    val_name: str
    num_val_records: int
    total_val_groups: int
    groups: tuple[OverlapGroup, ...]
    records: tuple[Record, ...]
    by_clip_name: VideoOverlap

    @property
    def num_records(self) -> int:
        return len(self.records)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def ok(self) -> bool:
        return not self.records

    def headline(self) -> str:
        return (f"video overlap: {self.num_records} of {self.num_val_records} records in {self.val_name} come from "
                f"{self.num_groups} of {self.total_val_groups} video groups that also appear in {self.train_name}")

    def summary(self, max_groups: int = 20) -> str:
        """Human-readable report (the text check_data.py prints)."""
        clip = self.by_clip_name
        lines = [
            self.headline(),
            f"  ({RULE}; by clip name alone, the file name before '__frame': {clip.num_records} records "
            f"from {clip.num_videos} of {clip.total_videos_b} clips)",
        ]
        lines.extend(f"  {g.label}: {g.num_train_records} train / {g.num_val_records} val records, "
                     f"{len(set(g.train_clips) | set(g.val_clips))} clip(s)" for g in self.groups[:max_groups])
        if self.num_groups > max_groups:
            lines.append(f"  ... {self.num_groups - max_groups} more groups")
        return "\n".join(lines)

    def metrics(self) -> dict[str, int]:
        """Counts to record next to the metrics of a run that was allowed to overlap."""
        return {
            "val_overlap_records": self.num_records,
            "val_overlap_groups": self.num_groups,
            "val_groups": self.total_val_groups,
        }

    def to_dict(self) -> dict:
        clip = self.by_clip_name
        return {
            "rule": RULE,
            "num_records": self.num_records,
            "num_groups": self.num_groups,
            "total_groups_other": self.total_val_groups,
            "num_records_other": self.num_val_records,
            "groups": [g.to_dict() for g in self.groups],
            # Our records are objects; a foreign index's entry (an IMDLBenCo pair) is kept whole under "entry".
            "records": [{"index": r.index, **(entry if isinstance(entry, dict) else {"entry": entry})}
                        for r, entry in ((r, r.to_json()) for r in self.records)],
            "by_clip_name": {
                "num_records": clip.num_records,
                "num_videos": clip.num_videos,
                "total_videos_other": clip.total_videos_b,
                "videos": list(clip.videos),
            },
        }


class VideoLeakageError(ValueError):
    """Train and val share video groups and the caller did not allow it."""


class VideoLeakageWarning(UserWarning):
    """Train and val share video groups; the caller allowed it explicitly."""


def check_leakage(train_records: list[Record], val_records: list[Record], *,
                  train_name: str = "train", val_name: str = "val") -> LeakageReport:
    """Which val records come from a video group that also has train records.

    Groups are computed over both lists together. The names only label the messages (pass the
    index paths). Works for any pair, e.g. train against the test set. Entries that are not readable
    records (``Record.defect``) are never trained or evaluated on and are left out.
    """
    train_records = [r for r in train_records if r.defect is None]
    val_records = [r for r in val_records if r.defect is None]
    group_of = video_groups(list(train_records) + list(val_records))
    train_by_group: dict[str, Counter] = defaultdict(Counter)
    for rec in train_records:
        train_by_group[group_of[rec.video]][rec.video] += 1
    val_by_group: dict[str, Counter] = defaultdict(Counter)
    for rec in val_records:
        val_by_group[group_of[rec.video]][rec.video] += 1
    shared = [label for label in val_by_group if label in train_by_group]
    groups = sorted(
        (OverlapGroup(label, tuple(sorted(train_by_group[label])), tuple(sorted(val_by_group[label])),
                      sum(train_by_group[label].values()), sum(val_by_group[label].values())) for label in shared),
        key=lambda g: (-g.num_val_records, g.label),
    )
    shared_set = set(shared)
    return LeakageReport(
        train_name=train_name,
        val_name=val_name,
        num_val_records=len(val_records),
        total_val_groups=len(val_by_group),
        groups=tuple(groups),
        records=tuple(r for r in val_records if group_of[r.video] in shared_set),
        by_clip_name=video_overlap(train_records, val_records),
    )


def require_no_leakage(train_records: list[Record], val_records: list[Record], *, allow_overlap: bool = False,
                       train_name: str = "train", val_name: str = "val",
                       allow_key: str = "allow_val_overlap") -> LeakageReport:
    """The guard for training/evaluation scripts: stop on overlap unless explicitly allowed.

    Overlap raises `VideoLeakageError` with the counts and the fix. With ``allow_overlap`` it emits
    a `VideoLeakageWarning` instead and returns the report, whose `LeakageReport.metrics` the caller
    should record with its results, so an inflated validation score stays visible. ``allow_key`` is
    the caller's name for the opt-in (a config key), quoted in the message.
    """
    report = check_leakage(train_records, val_records, train_name=train_name, val_name=val_name)
    if report.ok:
        return report
    message = (f"{report.headline()}. Frames of the same footage on both sides inflate validation scores. "
               f"Re-split grouped by video group with python Qwen_code/make_split.py, and see every shared group "
               f"with python Qwen_code/check_data.py --index {train_name} --other-index {val_name} --no-files")
    if not allow_overlap:
        raise VideoLeakageError(f"{message}; or set {allow_key} to true to run on this split anyway "
                                f"(the overlap is then recorded with the metrics).")
    warnings.warn(f"{message}. Running anyway because {allow_key} is set; the overlap counts are recorded "
                  f"with the metrics.", VideoLeakageWarning, stacklevel=2)
    return report
