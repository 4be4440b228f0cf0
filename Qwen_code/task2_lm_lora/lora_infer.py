"""Task 2 evaluation: the LoRA'd Qwen2.5-VL answers "Real or Fake" for every image of an index.

The adapter is attached strictly (every tensor of the file lands in the model, nothing else is
created). Image geometry, prompt and answer words default to what LORA.py trained with (the
adapter folder's recorded config); a config value that differs is used but announced. Every
image is scored by one batched forward: P(fake) = softmax over the fake/real answer-token logits at
the position whose logits training supervised (``qwen_forensics.evaluation.predictions.answer_logits``). With
``max_new_tokens > 0`` the greedy free text and the label its keywords name are extra columns,
never replacing the probability.

Metrics CSV (one row per run, seed columns first: timestamp, dataset, samples, positive_ratio,
auroc, acc, f1, lora_path, base_model_path; then ap and acc/f1 at the threshold tuned on
``val_annotation_file``); per-image predictions in ``output_json``; ``report.html`` (curves,
confusion matrices, per-method table) in ``out_dir``. Runs unchanged under
``accelerate launch --num_processes N``.
With ``--perturb`` (config key ``perturb``) the test index is evaluated again under each
perturbation, the model loaded once, into ``robustness.csv`` and the report's robustness section
(``qwen_forensics.evaluation.robustness``).

    python Qwen_code/task2_lm_lora/lora_infer.py --config Qwen_code/task2_lm_lora/config_lora_infer.json [--root DIR]
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qwen_forensics.config import load_config
from qwen_forensics.files import printable_json
from qwen_forensics.prompts import answer_token_ids
from qwen_forensics.task_configs import Task2InferConfig

CSV_COLUMNS = ["timestamp", "dataset", "samples", "positive_ratio", "auroc", "acc", "f1", "lora_path",
               "base_model_path"]


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task2InferConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_lora_infer.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import adapter_setup, load_adapter_strict, resolve_infer_setup
    from qwen_forensics.config import config_dict, precision
    from qwen_forensics.data import Task2ImageDataset, make_collator, parse_perturbations
    from qwen_forensics.evaluation import (ROBUSTNESS_CSV, RobustnessTable, SplitEvaluator, answer_scorer,
                                           start_evaluation_run, finish_evaluation, generated_columns,
                                           guard_checkpoint_split, image_report, prediction_rows, run_conditions)
    from qwen_forensics.model import load_model, load_processor
    from qwen_forensics.training import make_accelerator, peak_gib
    import torch
    if __name__ == "__main__":
        # Run as a command: evaluation only, so no autograd graph anywhere in this process.
        torch.set_grad_enabled(False)
    accelerator = make_accelerator(1)
    # Before any model loads: the threshold must not be tuned on footage the model was trained on.
    leak_check = guard_checkpoint_split(cfg.val_annotation_file, cfg.lora_path, allow_overlap=cfg.allow_val_overlap,
                                        val_key="val_annotation_file", say=accelerator.print)
    setup, notes = resolve_infer_setup(cfg, adapter_setup(cfg.lora_path))
    for note in notes:
        accelerator.print(f"note: {note}")
    out_dir = Path(cfg.out_dir)
    conditions = parse_perturbations(cfg.perturb)
    processor = load_processor(cfg.base_model_path, setup.image_size)
    fake_id, real_id = answer_token_ids(processor, setup.fake_word, setup.real_word)
    # The indexes are checked and their first batches decoded while the weights load.
    evaluate = SplitEvaluator(
        accelerator, cfg.data_root, cfg.on_bad_sample, out_dir, cfg.batch_size, cfg.num_workers,
        dataset=lambda records, perturbation=None: Task2ImageDataset.from_records(
            records, cfg.data_root, setup.image_size, perturbation, cfg.perturb_seed),
        collate=make_collator(processor, setup, train=False))
    evaluate.start(cfg.annotation_file, cfg.val_annotation_file)
    evaluate.perturb("test", conditions)
    run = start_evaluation_run(cfg, Path(__file__).name, evaluate, accelerator,
                               resolved={**config_dict(cfg), **setup.record()})

    run_in = precision(cfg.torch_dtype, accelerator.device)
    if run_in.note:
        accelerator.print(f"[precision] torch_dtype {run_in.note}")
    model = load_model(cfg.base_model_path, dtype=run_in.weights, device=accelerator.device, fast_paths=cfg.fast_paths)
    model.requires_grad_(False)
    loaded = load_adapter_strict(model, cfg.lora_path)
    accelerator.print(f"adapter {cfg.lora_path}: {loaded.num_tensors} tensors loaded strictly")

    predict = answer_scorer(model, accelerator, (fake_id, real_id), processor.tokenizer)
    test, tuned = evaluate.run(predict, val_kwargs={"max_new_tokens": 0},
                               test_kwargs={"max_new_tokens": cfg.max_new_tokens})
    tuned = tuned["p_fake"]

    def score(run) -> dict:
        rows = prediction_rows(run.records, run.predictions, tuned, setup.fake_word, setup.real_word)
        return {**image_report([r.label for r in run.records], run.predictions.p_fake, tuned_threshold=tuned),
                **generated_columns(rows)}

    robustness = RobustnessTable(out_dir / ROBUSTNESS_CSV) if conditions and accelerator.is_main_process else None
    run_conditions(evaluate, "test", cfg.annotation_file, test, conditions, predict, score, robustness,
                   say=accelerator.print, max_new_tokens=cfg.max_new_tokens)
    if not evaluate.close():
        return
    records, scores, images_per_s, skipped = test.records, test.predictions, test.images_per_s, test.skipped

    labels = [r.label for r in records]
    metrics = image_report(labels, scores.p_fake, tuned_threshold=tuned)
    rows = prediction_rows(records, scores, tuned, setup.fake_word, setup.real_word)
    csv_row = {"timestamp": datetime.now().isoformat(timespec="seconds"), "dataset": cfg.annotation_file,
               "samples": metrics["samples"], "positive_ratio": metrics["positive_ratio"],
               "auroc": metrics["auroc"],
               "acc": metrics["acc@0.5"], "f1": metrics["f1@0.5"], "lora_path": cfg.lora_path,
               "base_model_path": cfg.base_model_path, "ap": metrics["ap"], "acc@tuned": metrics["acc@tuned"],
               "f1@tuned": metrics["f1@tuned"], "threshold": metrics["threshold"],
               "image_size": "native" if setup.image_size is None else setup.image_size,
               "fake_token": setup.fake_word, "real_token": setup.real_word,
               "num_skipped": skipped,
               "images_per_s": images_per_s, "peak_gib": peak_gib(), **leak_check.columns(),
               "format": test.format}
    csv_row.update(generated_columns(rows))
    outputs = finish_evaluation(
        run=run, out_dir=out_dir, output_json=cfg.output_json, csv_path=cfg.csv_path, csv_row=csv_row,
        csv_columns=CSV_COLUMNS, rows=rows, metrics=metrics, score_columns=["p_fake"], thresholds={"p_fake": tuned},
        title="Task 2: LM-supervised ViT LoRA answers Real/Fake",
        description={"dataset": cfg.annotation_file, "validation index (threshold)": cfg.val_annotation_file,
                     "adapter": cfg.lora_path, "model": cfg.base_model_path, "image_size": csv_row["image_size"],
                     "answer words": f"{setup.fake_word} / {setup.real_word}",
                     **leak_check.columns()}, image_root=cfg.data_root,
        extra_sections=[robustness.section()] if robustness else ())
    print(evaluate.speed_line())
    print(printable_json({k: metrics[k] for k in ("samples", "auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned",
                                                  "f1@tuned", "threshold")}))
    print(outputs.summary())


if __name__ == "__main__":
    main()
