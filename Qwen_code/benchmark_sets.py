"""The field's benchmark table from any checkpoint: many test sets in one run, the model loaded once.

    python Qwen_code/benchmark_sets.py --ckpt <root>/task1_modular_lora/training/final \
        --set casia1=/data/CASIA1.0 --set coverage=/data/coverage.json --set ours=<root>/data/testset2/annotation.json \
        [--sets sets.json] [--val casia2=/data/CASIA2.0] --out DIR [--export-submission DIR]

``--ckpt``: a Task 1, 2 or 3 checkpoint (or the training output folder holding one), detected from its files
as ``predict.py`` does; base model, image size and prompt come from what training recorded (``--model``
replaces the model path). A set is ``NAME=PATH`` where PATH is an index in any format the evaluation scripts
read, told apart by the content: our JSON records (paths relative to ``--data-root``), IMDLBenCo's JSON pairs
``[image, mask | "Negative"]`` (paths relative to the JSON file), or an IMDLBenCo ``Tp/`` + ``Gt/`` [+ ``Au/``]
folder. ``--sets FILE``: a JSON object ``{"name": "path", ...}`` (relative paths next to the file). Every set is
validated before the model loads (``--on-bad-sample``); one that fails is reported in its row and the others
run. The thresholds (``acc@tuned``, ``f1@tuned``) come from the one ``--val`` index, never from a test set, which
is checked for video overlap with the checkpoint's training set first (as the evaluation scripts do).

Writes into ``--out``: ``benchmark.csv`` (one row per set: set, format, n_images, n_fake, n_skipped, every
metric column of the task's evaluation CSV, error, index), ``report.html`` (the table on top with the best
value of each column marked, a section per set with its curves), ``predictions_<set>.json`` and
``skipped_<set>/``; with ``--export-submission DIR``: ``DIR/<set>/prediction.txt``, ``mask/`` and
``submission.zip``; with ``--perturb SPEC...`` (``--perturb field``: IMDLBenCo's grid) each set is evaluated
again under each perturbation right after its clean pass, the model loaded once, into ``robustness.csv`` and
the report's robustness section. An earlier run's files in ``--out`` are first moved to
``previous_runs/<its start time>/``.
Exit code 2 when the checkpoint, the model or a set list cannot be used, 1 when no set could be evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qwen_forensics.checkpoints import CheckpointError, base_model_path, detect_checkpoint, start_run
from qwen_forensics.config import DEFAULT_ROOT, cap_worker_count, effective_root, relocate_path
from qwen_forensics.data import parse_perturbations
from qwen_forensics.data.perturb import SPEC_HELP
from qwen_forensics.evaluation import (Benchmark, CheckpointRunner, benchmark_outputs, guard_checkpoint_split,
                                       parse_sets)
from qwen_forensics.training import make_accelerator


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder (Task 1, 2 or 3) or the training "
                                                                 "output folder holding one")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=PATH",
                        help="a test set: an index file or a Tp/ + Gt/ folder (repeatable; evaluated in order)")
    parser.add_argument("--sets", dest="sets_file", type=Path, help='JSON object {"name": "path", ...} of test sets, '
                                                                   "evaluated before the --set ones")
    parser.add_argument("--val", metavar="NAME=PATH", help="validation index the thresholds are tuned on (not a set "
                                                           "of the table)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--export-submission", type=Path, metavar="DIR",
                        help="challenge submission per set into DIR/<set>/ (prediction.txt, mask/, submission.zip)")
    parser.add_argument("--model", help="base model folder (default: the one the checkpoint's training recorded)")
    parser.add_argument("--root", help=f"relocate every path under {DEFAULT_ROOT} to this folder")
    parser.add_argument("--data-root", help=f"folder our own indexes' paths are relative to (default: "
                                            f"{DEFAULT_ROOT}/data, relocated by --root)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=4, help="loader processes (default: %(default)s)")
    parser.add_argument("--pixel-threshold", type=float, default=0.5, help="heatmap probability threshold of the "
                                                                           "pixel metrics and masks (default: "
                                                                           "%(default)s)")
    parser.add_argument("--on-bad-sample", choices=("fail", "skip"), default="fail",
                        help="a set with bad records: not evaluated (fail), or evaluated without them (skip)")
    parser.add_argument("--allow-val-overlap", action="store_true",
                        help="tune on a --val index that shares video groups with the training set (warned)")
    parser.add_argument("--no-fast-paths", dest="fast_paths", action="store_false",
                        help="run plain transformers instead of the fast paths")
    parser.add_argument("--perturb", nargs="+", default=[], metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--perturb-seed", type=int, default=0, help="seed of the perturbations' random draws "
                                                                    "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0 or not 0 <= args.pixel_threshold <= 1:
        parser.error("--batch-size must be >= 1, --num-workers >= 0, --pixel-threshold in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = effective_root(args.root)
    try:
        sets = parse_sets(args.sets, args.sets_file, root)
        val_name, _, val_path = (args.val or "").partition("=")
        if args.val and not val_path:
            raise ValueError(f"--val {args.val!r}: write NAME=PATH")
        conditions = parse_perturbations(args.perturb)
        ckpt = detect_checkpoint(args.ckpt)
        model = base_model_path(ckpt, args.model)
    except (ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    val_path = relocate_path(val_path, root, Path.cwd()) if val_path else None
    # Under accelerate launch every process evaluates its share; the main one opens the run and writes.
    accelerator = make_accelerator(1)
    args.num_workers, workers_note = cap_worker_count(args.num_workers, f"--num-workers {args.num_workers}")
    for note in [*ckpt.notes, *([workers_note] if workers_note else [])]:
        accelerator.print(f"note: {note}")
    # Before anything loads: thresholds must not be tuned on footage the model was trained on.
    leak_check = guard_checkpoint_split(val_path, ckpt.folder, allow_overlap=args.allow_val_overlap, val_key="--val",
                                        say=accelerator.print)
    data_root = relocate_path(args.data_root or f"{DEFAULT_ROOT}/data", root, Path.cwd())
    submission = args.export_submission.absolute() if args.export_submission else None
    if accelerator.is_main_process:
        run = start_run(args.out, Path(__file__).name, {k: str(v) for k, v in vars(args).items()},
                        benchmark_outputs(list(sets), submission),
                        keep=[args.ckpt, *sets.values(), *([val_path] if val_path else [])])
    accelerator.wait_for_everyone()
    accelerator.print(f"checkpoint: {ckpt.kind} at {ckpt.folder}; model: {model}; {len(sets)} sets")
    benchmark = Benchmark(CheckpointRunner(ckpt, model, accelerator, fast_paths=args.fast_paths), args.out,
                          data_root, args.batch_size, args.num_workers, args.on_bad_sample, args.pixel_threshold,
                          submission, say=accelerator.print, perturbations=conditions, perturb_seed=args.perturb_seed)
    finished = benchmark.run(sets, val_path)
    if finished is None:
        return 0
    results, tuned = finished
    description = {"checkpoint": str(ckpt.folder), "kind": ckpt.kind, "model": model,
                   "validation index (thresholds)": f"{val_name} = {val_path}" if val_path else None,
                   **{f"tuned threshold {k}": v for k, v in tuned.items()}, "pixel_threshold": args.pixel_threshold,
                   **leak_check.columns(), **run.columns()}
    table, report = benchmark.write(results, description=description)
    speed = benchmark.speed_line()
    if speed:
        print(speed)
    for result in results:
        print(f"{result.name}: " + (f"not evaluated ({result.error})" if result.error else
                                    f"{result.n_images} images, {result.n_skipped} skipped"))
    print(f"benchmark table: {table}\nreport: {report}")
    if benchmark.robustness is not None:
        print(f"robustness: {benchmark.robustness.path}")
    return 0 if any(r.error is None for r in results) else 1


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
