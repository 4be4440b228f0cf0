"""Report on a data index: its format, counts, label balance, size histogram, every problem; optional leakage check.

    python Qwen_code/check_data.py --index <root>/data/trainingset2/train_idx.json --data-root <root>/data
    python Qwen_code/check_data.py --index train_idx.json --other-index val_idx.json --no-files
    python Qwen_code/check_data.py --index /data/CASIA1.0          # an IMDLBenCo Tp/ + Gt/ [+ Au/] folder
    python Qwen_code/check_data.py --index /data/coverage.json     # IMDLBenCo pairs [image, mask | "Negative"]

The format is told from the content (see qwen_forensics/data/formats.py); only our own JSON records have
paths relative to a data root (--data-root), the other formats' paths are absolute or relative to the index.

The leakage check compares video groups: clips linked by a shared ForgeryNet id (a fake with the
real of its target clip, one source/target pair under several method numbers, swaps between real
clips), see qwen_forensics/data/leakage.py. The count by clip name alone is printed for comparison.

Exit code 1 when any index has problems or, with --other-index, when a video group appears in both.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qwen_forensics.data import RECORDS, BadIndex, check_leakage, read_index, validate_index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="index JSON (annotation.json, train_idx.json, ...)")
    parser.add_argument("--data-root", type=Path, help="folder our index's paths are relative to (<root>/data); needed "
                                                       "for our JSON records unless --no-files")
    parser.add_argument("--other-index", type=Path, help="second index: report its records whose video group also appears in --index")
    parser.add_argument("--no-files", action="store_true", help="check only what the index says (no image files needed)")
    parser.add_argument("--json-out", type=Path, help="also write the full report as JSON here")
    parser.add_argument("--top-sizes", type=int, default=10, help="how many image sizes to list (default 10)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = [args.index] + ([args.other_index] if args.other_index else [])
    reports = []
    for path in paths:
        try:
            index = read_index(path)
        except BadIndex as err:
            print(f"error: {err.code}", file=sys.stderr)
            return 2
        if index.format == RECORDS and args.data_root is None and not args.no_files:
            print(f"error: {path} is our JSON index, whose paths are relative to a data root: pass --data-root "
                  "(or --no-files for an index-only check)", file=sys.stderr)
            return 2
        for note in index.notes:
            print(f"{path}: {note}")
        report = validate_index(index, args.data_root or ".", check_files=not args.no_files)
        print(report.summary(top_sizes=args.top_sizes))
        print()
        reports.append(report)

    result = {"reports": [r.to_dict() for r in reports]}
    leaked = 0
    if args.other_index:
        overlap = check_leakage(reports[0].records, reports[1].records, train_name=str(args.index), val_name=str(args.other_index))
        leaked = overlap.num_records
        print(overlap.summary(max_groups=20))
        if overlap.num_groups > 20:
            print("  (all groups and records: see --json-out)")
        if leaked:
            print("fix: re-split grouped by video group with python Qwen_code/make_split.py")
        result["overlap"] = overlap.to_dict()

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if leaked or any(not r.ok for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
