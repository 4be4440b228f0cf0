"""Task 1, subtask 1: evaluate the LoRA'd ViT + forensic heads.

Image metrics (AUROC, AP, ACC/F1 at 0.5 and at a threshold tuned on ``ann_val`` when given) and
pixel metrics at the original resolution (SPEC 7); one CSV row per run, a per-image predictions
file, heatmap pictures (image | ground truth | overlay) and ``report.html`` in ``out_dir``
(``qwen_forensics.evaluation.outputs``). With ``--perturb`` (config key ``perturb``) the test index is
evaluated again under each perturbation, the model loaded once, into ``robustness.csv`` and the report's
robustness section (``qwen_forensics.evaluation.robustness``).

    python Qwen_code/task1_modular_lora/subtask_vit_head_eval/lora_eval.py \
        --config Qwen_code/task1_modular_lora/subtask_vit_head_eval/config_eval.json
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qwen_forensics.config import load_config
from qwen_forensics.files import printable_json
from qwen_forensics.task_configs import Task1HeadEvalConfig

CSV_COLUMNS = ["timestamp", "dataset", "samples", "positive_ratio", "auroc", "acc@0.5", "f1@0.5", "pixel_f1",
               "pixel_iou", "ckpt_path", "model_path"]


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task1HeadEvalConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_eval.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import attach_task1_checkpoint, check_seed_lora_keys, checkpoint_image_size
    from qwen_forensics.config import precision
    from qwen_forensics.data import ForgeryDataset, ImageBatchCollator, MaskRule, parse_perturbations
    from qwen_forensics.evaluation import (ROBUSTNESS_CSV, HeatmapSource, PictureWriter, PixelCounter, RobustnessTable,
                                           SplitEvaluator, SubmissionWriter, each_batch, start_evaluation_run,
                                           finish_evaluation, guard_checkpoint_split, predict_heads, run_conditions,
                                           score_heads)
    from qwen_forensics.model import load_processor, load_vision_tower
    from qwen_forensics.training import make_accelerator, peak_gib
    import torch
    if __name__ == "__main__":
        # Run as a command: evaluation only, so no autograd graph anywhere in this process.
        torch.set_grad_enabled(False)
    accelerator = make_accelerator(1)
    # Before any model loads: the threshold must not be tuned on footage the model was trained on.
    leak_check = guard_checkpoint_split(cfg.ann_val, cfg.ckpt_path, allow_overlap=cfg.allow_val_overlap,
                                        val_key="ann_val", say=accelerator.print)
    out_dir = Path(cfg.out_dir)
    image_size = cfg.image_size or checkpoint_image_size(cfg.ckpt_path)
    mask_rule = MaskRule(cfg.mask_rule.rel, cfg.mask_rule.quantile)
    conditions = parse_perturbations(cfg.perturb)
    # The processor first: it checks image_size against the model's patch size before weights load.
    collate = ImageBatchCollator(load_processor(cfg.model_path, image_size))
    # The indexes are checked and their first batches decoded while the weights load; the loader workers
    # also decode each fake's ground truth, which the loop scores against at the original resolution.
    evaluate = SplitEvaluator(
        accelerator, cfg.data_root, cfg.on_bad_sample, out_dir, cfg.batch_size, cfg.num_workers,
        dataset=lambda records, perturbation=None: ForgeryDataset(
            records, cfg.data_root, image_size, mask_rule, with_mask=False, with_truth=True,
            perturbation=perturbation, perturb_seed=cfg.perturb_seed), collate=collate)
    evaluate.start(cfg.ann_test, cfg.ann_val)
    evaluate.perturb("test", conditions)
    # Before the weights load: two images of one file stem would overwrite each other's submission mask.
    # On every process (an index it refuses stops them all); each writes the masks of its own records.
    submission = (SubmissionWriter(evaluate.records("test"), cfg.data_root, cfg.export_submission, image_size,
                                   cfg.pixel_threshold, writes=evaluate.writes) if cfg.export_submission else None)
    run = start_evaluation_run(cfg, Path(__file__).name, evaluate, accelerator, submission=cfg.export_submission)

    run_in = precision(cfg.amp_dtype, accelerator.device)
    if run_in.note:
        accelerator.print(f"[precision] amp_dtype {run_in.note}")
    visual = load_vision_tower(cfg.model_path, dtype=run_in.weights, fast_paths=cfg.fast_paths)
    model = attach_task1_checkpoint(visual, cfg.ckpt_path)
    for note in check_seed_lora_keys(cfg, visual, cfg.ckpt_path):
        accelerator.print(f"note: {note}")
    model = accelerator.prepare(model)

    counter = PixelCounter(image_size, cfg.pixel_threshold)
    # heatmaps/ pictures are drawn on background threads while the loop runs, each by the process that scored it.
    pictures = PictureWriter(evaluate.records("test"), cfg.data_root, mask_rule, image_size, out_dir, cfg.save_heatmaps,
                             cfg.num_heatmaps, writes=evaluate.writes)

    def predict(loader, n, **kw):
        return predict_heads(model, loader, accelerator, run_in.autocast, n, counter, **kw)

    test, tuned = evaluate.run(predict, test_kwargs={"on_batch": each_batch(pictures and pictures.on_batch,
                                                                            submission and submission.on_batch)})
    tuned = tuned["p_fake"]
    robustness = RobustnessTable(out_dir / ROBUSTNESS_CSV) if conditions and accelerator.is_main_process else None
    run_conditions(evaluate, "test", cfg.ann_test, test, conditions, predict,
                   lambda run: score_heads(run.records, run.predictions.p_fake, run.predictions.counts,
                                           pixel_threshold=cfg.pixel_threshold, tuned_threshold=tuned,
                                           imdlbenco=True)[0], robustness, say=accelerator.print)
    if not evaluate.close(pictures.writer, submission and submission.writer):
        return
    records, preds, images_per_s, skipped = test.records, test.predictions, test.images_per_s, test.skipped

    metrics, rows = score_heads(records, preds.p_fake, preds.counts, pixel_threshold=cfg.pixel_threshold,
                                tuned_threshold=tuned, imdlbenco=True)
    heatmaps = HeatmapSource(records, preds.heatmaps, Path(cfg.data_root), mask_rule, image_size)
    row = {"timestamp": datetime.now().isoformat(timespec="seconds"), "dataset": cfg.ann_test, **metrics,
           "ckpt_path": cfg.ckpt_path, "model_path": cfg.model_path, "image_size": image_size,
           "num_skipped": skipped, "images_per_s": images_per_s, "peak_gib": peak_gib(), **leak_check.columns(),
           "format": test.format}
    if submission is not None:
        print(f"submission: {submission.finish(preds.p_fake, preds.heatmaps)}")
    outputs = finish_evaluation(
        run=run, out_dir=out_dir, output_json=cfg.output_json, csv_path=cfg.csv_path, csv_row=row, csv_columns=CSV_COLUMNS,
        rows=rows, metrics=metrics, score_columns=["p_fake"], thresholds={"p_fake": tuned},
        title="Task 1 subtask 1: ViT LoRA + forensic heads",
        description={"dataset": cfg.ann_test, "validation index (threshold)": cfg.ann_val, "checkpoint": cfg.ckpt_path,
                     "model": cfg.model_path, "image_size": image_size, "pixel_threshold": cfg.pixel_threshold,
                     **leak_check.columns()},
        heatmaps=heatmaps, pictures=pictures, pixel_threshold=cfg.pixel_threshold,
        extra_sections=[robustness.section()] if robustness else ())
    print(evaluate.speed_line())
    print(printable_json({k: metrics[k] for k in ("samples", "auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned",
                                                  "f1@tuned", "pixel_f1", "pixel_iou", "ciou", "false_alarm", "score")}))
    print(outputs.summary())


if __name__ == "__main__":
    main()
