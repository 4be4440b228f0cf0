"""Task 3 evaluation: the LM's answer, the heads' verdict and the heads' heatmaps, side by side.

One batched forward per batch gives all three: P(fake) from the answer-token logits (softmax over
the fake and real words at the answer position), P(fake) from the heads' classifier, and the
evidence heatmap (pixel metrics at the original resolution, SPEC 7). Image metrics are reported
for both verdicts (``lm_*`` and ``head_*`` columns); ``score`` uses the LM's AUROC, ``head_score``
the heads'. Thresholds are tuned on ``val_annotation_file`` when given (never on the test set).
Writes one CSV row per run, ``predictions.json`` (per image), heatmap pictures and ``report.html``
(both verdicts' curves and tables, the heads' pixel metrics and gallery; ``qwen_forensics.evaluation.outputs``).
With ``--perturb`` (config key ``perturb``) the test index is evaluated again under each perturbation, the
model loaded once, into ``robustness.csv`` and the report's robustness section
(``qwen_forensics.evaluation.robustness``).

    python Qwen_code/task3_hybrid_lora/hybrid_eval.py --config Qwen_code/task3_hybrid_lora/config_hybrid_eval.json
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qwen_forensics.config import load_config
from qwen_forensics.files import printable_json
from qwen_forensics.task_configs import Task3EvalConfig

def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task3EvalConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_hybrid_eval.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import (CheckpointPaths, answer_ids_for, load_hybrid_model, lora_config_notes,
                                            read_hybrid_spec, seed_key_notes)
    from qwen_forensics.config import precision
    from qwen_forensics.data import ForgeryDataset, HybridCollator, MaskRule, parse_perturbations
    from qwen_forensics.evaluation import (HYBRID_IMAGE_KEYS, ROBUSTNESS_CSV, HeatmapSource, PictureWriter,
                                           PixelCounter, RobustnessTable, SplitEvaluator, SubmissionWriter, each_batch,
                                           start_evaluation_run, finish_evaluation, guard_checkpoint_split,
                                           predict_hybrid, run_conditions, score_hybrid)
    from qwen_forensics.model import HybridPrompt, load_model, load_processor
    from qwen_forensics.training import make_accelerator, peak_gib, seed_everything
    import torch
    if __name__ == "__main__":
        # Run as a command: evaluation only, so no autograd graph anywhere in this process.
        torch.set_grad_enabled(False)
    csv_columns = ["timestamp", "dataset", "samples", "positive_ratio", *(f"lm_{k}" for k in HYBRID_IMAGE_KEYS),
                   *(f"head_{k}" for k in HYBRID_IMAGE_KEYS), "pixel_f1", "pixel_iou", "ciou", "cdice", "false_alarm",
                   "num_fake_empty_mask", "score", "head_score", "lora_checkpoint", "head_checkpoint",
                   "fusion_checkpoint", "base_model_path"]
    accelerator = make_accelerator(1)
    # Before any model loads: the threshold must not be tuned on footage the model was trained on.
    leak_check = guard_checkpoint_split(cfg.val_annotation_file, Path(cfg.fusion_checkpoint).parent,
                                        allow_overlap=cfg.allow_val_overlap, val_key="val_annotation_file",
                                        say=accelerator.print)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.out_dir)
    mask_rule = MaskRule(cfg.mask_rule.rel, cfg.mask_rule.quantile)
    conditions = parse_perturbations(cfg.perturb)
    paths = CheckpointPaths.from_config(cfg)
    trained = read_hybrid_spec(paths.fusion_file)
    for note in seed_key_notes(cfg, trained):
        accelerator.print(f"note: {note}")
    image_size = cfg.image_size or trained.image_size
    if image_size != trained.image_size:
        accelerator.print(f"note: evaluating at image_size {image_size}; the model was trained at {trained.image_size}")
    run_in = precision(cfg.torch_dtype, accelerator.device)
    if run_in.note:
        accelerator.print(f"[precision] torch_dtype {run_in.note}")
    # The processor first: it checks image_size against the model's patch size before weights load.
    processor = load_processor(cfg.base_model_path, image_size)
    prompt = trained.hybrid_prompt(processor)
    if cfg.prompt is not None and cfg.prompt != trained.prompt:
        accelerator.print(f"note: evaluating with prompt {cfg.prompt!r}; the model was trained with {trained.prompt!r}")
        prompt = HybridPrompt.build(processor, cfg.prompt, trained.fusion_tokens, fake_word=trained.fake_word,
                                    real_word=trained.real_word, head_verdict=trained.head_verdict_prompt)
    # The indexes are checked and their first batches decoded while the weights load; the loader workers
    # also decode each fake's ground truth, which the loop scores the heads' heatmaps against.
    evaluate = SplitEvaluator(
        accelerator, cfg.data_root, cfg.on_bad_sample, out_dir, cfg.batch_size, cfg.num_workers,
        dataset=lambda records, perturbation=None: ForgeryDataset(
            records, cfg.data_root, image_size, mask_rule, with_mask=False, with_truth=True,
            perturbation=perturbation, perturb_seed=cfg.perturb_seed),
        collate=HybridCollator(processor, prompt))
    evaluate.start(cfg.annotation_file, cfg.val_annotation_file)
    evaluate.perturb("test", conditions)
    # Before the weights load: two images of one file stem would overwrite each other's submission mask.
    # On every process (an index it refuses stops them all); each writes the masks of its own records.
    submission = (SubmissionWriter(evaluate.records("test"), cfg.data_root, cfg.export_submission, image_size,
                                   cfg.pixel_threshold, writes=evaluate.writes) if cfg.export_submission else None)
    run = start_evaluation_run(cfg, Path(__file__).name, evaluate, accelerator, submission=cfg.export_submission)

    base = load_model(cfg.base_model_path, dtype=run_in.weights, device=accelerator.device, fast_paths=cfg.fast_paths)
    if cfg.lora is not None:
        for note in lora_config_notes(base, cfg.lora, trained):
            accelerator.print(f"note: {note}")
    model, spec = load_hybrid_model(base, processor, paths)
    model.prompt = prompt
    answer_ids = answer_ids_for(processor, spec)
    counter = PixelCounter(image_size, cfg.pixel_threshold)
    # heatmaps/ pictures are drawn on background threads while the loop runs, each by the process that scored it.
    pictures = PictureWriter(evaluate.records("test"), cfg.data_root, mask_rule, image_size, out_dir, cfg.save_heatmaps,
                             cfg.num_heatmaps, writes=evaluate.writes)

    def predict(loader, n, **kw):
        return predict_hybrid(model, loader, accelerator, answer_ids, run_in.autocast, n, counter=counter, **kw)

    test, tuned = evaluate.run(predict, scores=("p_fake_lm", "p_fake_head"),
                               test_kwargs={"on_batch": each_batch(pictures and pictures.on_batch,
                                                                  submission and submission.on_batch)})
    tuned_lm, tuned_head = tuned["p_fake_lm"], tuned["p_fake_head"]
    robustness = RobustnessTable(out_dir / ROBUSTNESS_CSV) if conditions and accelerator.is_main_process else None
    run_conditions(evaluate, "test", cfg.annotation_file, test, conditions, predict,
                   lambda run: score_hybrid(run.records, run.predictions, pixel_threshold=cfg.pixel_threshold,
                                            tuned_lm=tuned_lm, tuned_head=tuned_head)[0],
                   robustness, say=accelerator.print)
    if not evaluate.close(pictures.writer, submission and submission.writer):
        return
    records, preds, images_per_s, skipped = test.records, test.predictions, test.images_per_s, test.skipped

    metrics, rows = score_hybrid(records, preds, pixel_threshold=cfg.pixel_threshold, tuned_lm=tuned_lm,
                                 tuned_head=tuned_head)
    heatmaps = HeatmapSource(records, preds.heatmaps, Path(cfg.data_root), mask_rule, image_size)
    row = {"timestamp": datetime.now().isoformat(timespec="seconds"), "dataset": cfg.annotation_file, **metrics,
           "lora_checkpoint": cfg.lora_checkpoint, "head_checkpoint": cfg.head_checkpoint,
           "fusion_checkpoint": cfg.fusion_checkpoint, "base_model_path": cfg.base_model_path,
           "image_size": image_size, "num_skipped": skipped, "images_per_s": images_per_s,
           "peak_gib": peak_gib(), **leak_check.columns(), "format": test.format}
    if submission is not None:
        print(f"submission: {submission.finish(preds.p_fake_lm, preds.heatmaps)}")
    outputs = finish_evaluation(
        run=run, out_dir=out_dir, output_json=cfg.output_json, csv_path=cfg.csv_path, csv_row=row,
        csv_columns=csv_columns,
        rows=rows, metrics=metrics, score_columns=["p_fake_lm", "p_fake_head"],
        thresholds={"p_fake_lm": tuned_lm, "p_fake_head": tuned_head},
        title="Task 3: hybrid LoRA (LM answer and forensic heads)",
        description={"dataset": cfg.annotation_file, "validation index (thresholds)": cfg.val_annotation_file,
                     "adapter": cfg.lora_checkpoint, "heads": cfg.head_checkpoint, "fusion": cfg.fusion_checkpoint,
                     "model": cfg.base_model_path, "image_size": image_size, "pixel_threshold": cfg.pixel_threshold,
                     **leak_check.columns()},
        heatmaps=heatmaps, pictures=pictures, pixel_threshold=cfg.pixel_threshold,
        extra_sections=[robustness.section()] if robustness else ())
    print(evaluate.speed_line())
    print(printable_json(metrics))
    print(outputs.summary())


if __name__ == "__main__":
    main()
