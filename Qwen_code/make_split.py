"""Split an annotation.json into train_idx.json / val_idx.json, grouped by video and label-balanced.

    python Qwen_code/make_split.py --annotation <root>/data/trainingset2/annotation.json --seed 0

No video group lands in both files: clips that share a ForgeryNet id (a fake and the real of its
target clip, one source/target pair under several method numbers, swaps between real clips) stay
together; see qwen_forensics/data/leakage.py. The index is validated first (index-only); problems
stop the split with the full list.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from qwen_forensics.data import (BadIndex, Record, apply_bad_sample_policy, load_index, save_index, split_by_video,
                                 validate_records, video_groups)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation", required=True, type=Path, help="annotation.json to split")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of records for val (default 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the video-group order (default 0)")
    parser.add_argument("--out-dir", type=Path, help="where to write train_idx.json / val_idx.json (default: next to the annotation)")
    parser.add_argument("--force", action="store_true", help="overwrite existing train_idx.json / val_idx.json")
    return parser.parse_args(argv)


def _describe(name: str, records: list[Record], group_of: dict[str, str]) -> str:
    labels = Counter(r.label for r in records)
    clips = {r.video for r in records}
    groups = len({group_of[c] for c in clips})
    fake = 100.0 * labels[1] / len(records)
    return (f"{name}: {len(records)} records, {len(clips)} clips in {groups} video groups, "
            f"{labels[0]} real / {labels[1]} fake ({fake:.1f}% fake)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out_dir if args.out_dir is not None else args.annotation.parent
    targets = [out_dir / "train_idx.json", out_dir / "val_idx.json"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} already exist; pass --force to overwrite or choose --out-dir.", file=sys.stderr)
        return 2
    try:
        report = validate_records(load_index(args.annotation), args.annotation.parent, check_files=False, source=str(args.annotation))
        records = apply_bad_sample_policy(report, "fail", out_dir)
        train, val = split_by_video(records, args.val_fraction, args.seed)
    except BadIndex as err:
        print(f"error: {err.code}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_index(train, targets[0])
    save_index(val, targets[1])
    group_of = video_groups(records)
    print(_describe("all  ", records, group_of))
    print(_describe("train", train, group_of) + f" -> {targets[0]}")
    print(_describe("val  ", val, group_of) + f" -> {targets[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
