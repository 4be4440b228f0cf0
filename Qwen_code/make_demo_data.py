"""Write the synthetic demo forgery set in the user's data layout under ``<root>/data``.

Example::

    python Qwen_code/make_demo_data.py --root /tmp/qf_demo --seed 0 --n-train 120 --n-test 40

``--root`` defaults to the environment variable QWEN_FORENSICS_ROOT (the same root override the
configs use); there is deliberately no fallback to /root/autodl-tmp, where the real data lives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from qwen_forensics.demo.dataset import make_demo_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("QWEN_FORENSICS_ROOT"),
                        help="workspace folder; the set goes to ROOT/data "
                             "(default: $QWEN_FORENSICS_ROOT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=120,
                        help="images in trainingset2 (even; split by video into train/val)")
    parser.add_argument("--n-test", type=int, default=40, help="images in testset2 (even)")
    parser.add_argument("--frames-per-video", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic set written earlier by this tool")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error("give --root DIR or set QWEN_FORENSICS_ROOT")
    try:
        summary = make_demo_dataset(args.root, n_train=args.n_train, n_test=args.n_test,
                                    seed=args.seed, frames_per_video=args.frames_per_video,
                                    overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"make_demo_data.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
