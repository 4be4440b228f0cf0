"""Is this image forged, and where? Predict on image files or folders with any trained checkpoint.

    python Qwen_code/predict.py --ckpt <root>/task1_modular_lora/training/final photo.jpg frames/ [--out DIR]
        [--batch-size 8] [--model PATH] [--max-new-tokens 4] [--threshold 0.5] [--recursive]

``--ckpt`` is a Task 1 checkpoint folder, a Task 2 adapter folder or a Task 3 checkpoint (any of its
layouts), or the training output folder holding one; the kind is detected from the files and every
setting (base model, image size, prompt, answer words) comes from what training recorded, so nothing
is repeated here (``--model`` replaces the recorded base model, e.g. after moving it). See
``qwen_forensics/inference.py`` for what each kind of folder contains.

Per image: P(fake) from what the checkpoint has (``p_fake_head`` from the forensic heads of Tasks 1
and 3, ``p_fake_lm`` from the answer-token logits of Tasks 2 and 3; ``p_fake`` is the LM's where there
is one), ``verdict`` at ``--threshold``, the LM's greedy answer text (``answer_text``, Tasks 2 and 3,
up to ``--max-new-tokens`` tokens; 0 turns it off) and, with heads, the heatmap at the original
resolution (grey PNG, 0-255 = P 0-1) and an overlay (JPEG, at most 1024 px on its long side). Images of any size are letterboxed to the
checkpoint's ``image_size`` as in evaluation, in batches of ``--batch-size``.

Writes into ``--out`` (default ``predictions/`` in the current folder, git-ignored in the repository):
``index.html`` (open it: every image with its overlay and colour scale, P(fake) and verdict, sortable
by score and filterable by verdict, and the skipped files), ``predictions.csv`` and ``predictions.json``
(one row per image, input order; ``image`` is the absolute path, picture paths are relative to the
output folder; ``letterbox_scale`` is how much the image was resized, and images enlarged more than 4x
are named in a warning), ``heatmaps/`` (full resolution), ``overlays/``, ``previews/``, ``skipped.json``
(unreadable, truncated or non-image files with the reason, and folder entries without an image
extension) and ``run.json`` (the checkpoint used, the run id). ``--perturb SPEC...`` (``data.perturb``, as
the evaluation scripts take it) predicts every image again under each perturbation, the model loaded
once: the rows of each pass follow the clean ones, with ``perturbation`` and ``level`` columns, and the
pictures of a pass end in ``_<kind>-<level>``. An earlier run's files in ``--out`` are
first moved to ``previous_runs/<its start time>/``. Folders are scanned for .jpg .jpeg .png .bmp .webp
.tif .tiff (``--recursive``: subfolders too). Exit code 2 when the checkpoint or model cannot be used,
1 when no input is a readable image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qwen_forensics.config import cap_worker_count, usable_cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from qwen_forensics.data import parse_perturbations
    from qwen_forensics.data.perturb import SPEC_HELP
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder (Task 1, 2 or 3) or the training "
                                                                 "output folder holding one")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files and folders")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=min(4, usable_cores()),
                        help="loader processes decoding the images while the model runs (0: in this process; "
                             "default: %(default)s, at most 4 and at most this machine's cores)")
    parser.add_argument("--model", help="base model folder (default: the one the checkpoint's training recorded)")
    parser.add_argument("--max-new-tokens", type=int, default=4,
                        help="tokens of free-text LM answer per image (Tasks 2 and 3; 0: none; default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.5, help="verdict 'fake' when p_fake >= this "
                                                                     "(default: %(default)s)")
    parser.add_argument("--recursive", action="store_true", help="scan subfolders of folder inputs too")
    parser.add_argument("--no-fast-paths", dest="fast_paths", action="store_false",
                        help="run plain transformers instead of the fast paths (batched window attention, fused "
                             "kernels)")
    parser.add_argument("--perturb", nargs="+", default=[], metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--perturb-seed", type=int, default=0, help="seed of the perturbations' random draws "
                                                                    "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 0 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1, --max-new-tokens and --num-workers >= 0")
    try:
        args.conditions = parse_perturbations(args.perturb)
    except ValueError as err:
        parser.error(f"--perturb: {err}")
    args.num_workers, note = cap_worker_count(args.num_workers, f"--num-workers {args.num_workers}")
    if note:
        print(f"note: {note}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import open_checkpoint, start_run
    from qwen_forensics.data import IMAGE_SUFFIXES
    from qwen_forensics.evaluation import (PREDICT_OUTPUTS, RUN_JSON, HeatmapFiles, ImagePredictor, collect_images,
                                           enlarged_images, primary_score, write_prediction_gallery, write_predictions)
    from qwen_forensics.training import evaluation_speed_line, make_accelerator
    import torch
    if __name__ == "__main__":
        # Run as a command: evaluation only, so no autograd graph anywhere in this process.
        torch.set_grad_enabled(False)
    opened = open_checkpoint(args.ckpt, args.model)
    if opened is None:
        return 2
    ckpt, model = opened
    parts = " + ".join(name for name, has in (("heads", ckpt.has_heads), ("LM answer", ckpt.has_lm)) if has)
    print(f"checkpoint: {ckpt.kind} at {ckpt.folder} ({parts}; image_size {ckpt.image_size or 'native'}); "
          f"model: {model}")

    # An earlier prediction run in --out is moved to previous_runs/ instead of being overwritten.
    values = {k: str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v
              for k, v in vars(args).items() if k != "conditions"}
    run_record = start_run(args.out, Path(__file__).name, values, PREDICT_OUTPUTS, keep=[args.ckpt, *args.inputs])
    scan = collect_images(args.inputs, recursive=args.recursive, exclude=args.out)
    for bad in scan.bad:
        print(f"skipped {bad.path}: {bad.reason}")
    if scan.ignored:
        print(f"ignored {len(scan.ignored)} folder entries without an image extension ({', '.join(IMAGE_SUFFIXES)}); "
              f"listed in {args.out / 'skipped.json'}")
    conditions = [None, *args.conditions]
    # With heads, each batch's heatmaps and overlays are made on the device and written on background threads meanwhile.
    pictures = {c: HeatmapFiles(args.out, scan, ckpt.image_size, c) if ckpt.has_heads else None for c in conditions}
    passes = []
    if scan.images:
        predictor = ImagePredictor(ckpt, model, make_accelerator(1), batch_size=args.batch_size,
                                   max_new_tokens=args.max_new_tokens, num_workers=args.num_workers,
                                   fast_paths=args.fast_paths)
        passes = list(predictor.passes(scan.images, conditions, perturb_seed=args.perturb_seed,
                                       on_batch=lambda c: pictures[c] and pictures[c].on_batch))
    rows = write_predictions(args.out, ckpt, scan, passes, threshold=args.threshold,
                             heatmap_files=[pictures[c] for c in conditions[:len(passes)]],
                             conditions=bool(args.conditions))
    index = write_prediction_gallery(args.out, rows, scan, ckpt, threshold=args.threshold)
    enlarged = [r for r in enlarged_images(rows) if r.get("perturbation") in (None, "none")]
    if enlarged:
        examples = ", ".join(f"{Path(r['image']).name} ({r['width']}x{r['height']}, {r['letterbox_scale']:.1f}x)"
                             for r in enlarged[:3])
        print(f"warning: {len(enlarged)} image(s) enlarged more than 4x to the checkpoint's {ckpt.image_size} px "
              f"letterbox, too small for a reliable result: {examples}{', ...' if len(enlarged) > 3 else ''}")
    run = {**run_record.columns(), "checkpoint": str(ckpt.folder), "kind": ckpt.kind, "model": model,
           "image_size": ckpt.image_size,
           "p_fake": primary_score(ckpt), "threshold": args.threshold, "images": len(scan.images),
           "skipped": len(scan.bad), "perturb": [c.name for c in args.conditions], "perturb_seed": args.perturb_seed,
           "notes": list(ckpt.notes)}
    (args.out / RUN_JSON).write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    if passes:
        print(evaluation_speed_line(len(rows), sum(p.seconds for p in passes), time.perf_counter() - passes[0].started))
    fakes = sum(r["verdict"] == "fake" for r in rows)
    passes_text = f" under {len(conditions)} conditions ({fakes} of {len(rows)} rows" if args.conditions else f" ({fakes}"
    print(f"{len(scan.images)} images predicted{passes_text} fake at p_fake >= {args.threshold}), "
          f"{len(scan.bad)} skipped\n"
          f"predictions: {args.out / 'predictions.csv'} and {args.out / 'predictions.json'}\n"
          f"gallery (open in a browser): {index.resolve()}")
    if not rows:
        print("error: none of the inputs is a readable image", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
