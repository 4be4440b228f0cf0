"""Train/val split grouped by video, label-balanced, seeded.

Frames of one video are near-duplicates; a frame-level split puts the same video on both sides and
inflates validation scores (the user's own split leaks 506 of 1,500 val records this way).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict

from .records import Record


def split_by_video(records: list[Record], val_fraction: float = 0.15, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Split into (train, val) so that no video is on both sides.

    Videos are visited in a seeded random order; a video goes to val when that brings the val
    label counts closer (L1 distance) to ``val_fraction`` of each label's global count. So val gets
    about ``val_fraction`` of the records with the global label ratio, whatever the video sizes or
    their label mix. Both outputs keep the input order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}.")
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.video].append(rec)
    if len(groups) < 2:
        raise ValueError(f"need at least 2 videos to split, got {len(groups)}; video key = file name before '__frame'.")

    totals = Counter(r.label for r in records)
    target = {label: val_fraction * n for label, n in totals.items()}
    current: Counter = Counter()

    def deviation(counts: Counter) -> float:
        return sum(abs(target[label] - counts[label]) for label in target)

    order = sorted(groups)
    random.Random(seed).shuffle(order)
    val_videos = set()
    for video in order:
        candidate = current + Counter(r.label for r in groups[video])
        if deviation(candidate) < deviation(current):
            val_videos.add(video)
            current = candidate
    if not val_videos or len(val_videos) == len(groups):
        raise ValueError(f"val_fraction {val_fraction} leaves one side empty with {len(groups)} videos; choose another fraction.")
    train = [r for r in records if r.video not in val_videos]
    val = [r for r in records if r.video in val_videos]
    return train, val
