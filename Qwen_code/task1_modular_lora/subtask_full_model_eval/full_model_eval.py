"""Task 1, subtask 2: the full Qwen2.5-VL with the Task 1 visual LoRA answers "Real or Fake".

The full model is loaded, the Task 1 checkpoint's visual LoRA is attached strictly to its vision
tower (the heads are not used), and every image is scored by one batched forward:
P(fake) = softmax over the fake/real answer-token logits at the answer position (the last one,
with left padding), as defined in ``qwen_forensics.evaluation.predictions``. The answer tokens are what the chat
template puts right after the assistant header (SPEC 6.3); a fake/real word that is not a single
token there is an error. Images are letterboxed to the checkpoint's ``image_size`` unless the
config sets one. With ``max_new_tokens > 0`` the greedy free text is reported in its own
columns, next to (never instead of) the probability.

Image metrics (AUROC, AP, ACC/F1 at 0.5, and at a threshold tuned on ``val_annotation_file``
when given) go to the metrics CSV, one row per run; per-image results to ``output_json``; curves,
confusion matrices and the per-method table to ``report.html`` in ``out_dir``. Runs
unchanged under ``accelerate launch --num_processes N`` (each process scores its shard).
With ``--perturb`` (config key ``perturb``) the test index is evaluated again under each
perturbation, the model loaded once, into ``robustness.csv`` and the report's robustness section
(``qwen_forensics.evaluation.robustness``).

    python Qwen_code/task1_modular_lora/subtask_full_model_eval/full_model_eval.py \
        --config Qwen_code/task1_modular_lora/subtask_full_model_eval/config_full_model_eval.json
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qwen_forensics.config import load_config
from qwen_forensics.files import printable_json
from qwen_forensics.prompts import answer_token_ids, answer_word
from qwen_forensics.task_configs import Task1FullModelEvalConfig

CSV_COLUMNS = ["timestamp", "dataset", "samples", "positive_ratio", "auroc", "acc@0.5", "f1@0.5", "lora_checkpoint",
               "model_path"]


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task1FullModelEvalConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_full_model_eval.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import attach_task1_lora, check_seed_lora_keys, checkpoint_image_size
    from qwen_forensics.config import precision
    from qwen_forensics.data import ForgeryDataset, VisionLanguageCollator, parse_perturbations
    from qwen_forensics.evaluation import (ROBUSTNESS_CSV, RobustnessTable, SplitEvaluator, answer_scorer,
                                           start_evaluation_run, finish_evaluation, generated_columns,
                                           guard_checkpoint_split, image_report, prediction_rows, run_conditions)
    from qwen_forensics.model import get_visual, load_model, load_processor
    from qwen_forensics.training import make_accelerator, peak_gib, seed_everything
    import torch
    if __name__ == "__main__":
        # Run as a command: evaluation only, so no autograd graph anywhere in this process.
        torch.set_grad_enabled(False)
    accelerator = make_accelerator(1)
    # Before any model loads: the threshold must not be tuned on footage the model was trained on.
    leak_check = guard_checkpoint_split(cfg.val_annotation_file, cfg.lora_checkpoint,
                                        allow_overlap=cfg.allow_val_overlap, val_key="val_annotation_file",
                                        say=accelerator.print)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.out_dir)
    image_size = cfg.image_size or checkpoint_image_size(cfg.lora_checkpoint)
    conditions = parse_perturbations(cfg.perturb)
    processor = load_processor(cfg.model_path, image_size)
    # Task 1 never trains the LM, so the words read are the ones the instruct model emits.
    (fake_word, fake_note), (real_word, real_note) = answer_word(cfg.fake_token), answer_word(cfg.real_token)
    for note in (fake_note, real_note):
        if note:
            accelerator.print(f"note: {note}")
    try:
        fake_id, real_id = answer_token_ids(processor, fake_word, real_word)
    except ValueError as err:
        raise SystemExit(f"config error (fake_token={cfg.fake_token!r}, real_token={cfg.real_token!r}): {err}") from None
    # The indexes are checked and their first batches decoded while the weights load.
    evaluate = SplitEvaluator(
        accelerator, cfg.data_root, cfg.on_bad_sample, out_dir, cfg.batch_size, cfg.num_workers,
        dataset=lambda records, perturbation=None: ForgeryDataset(records, cfg.data_root, image_size, with_mask=False,
                                                                  perturbation=perturbation,
                                                                  perturb_seed=cfg.perturb_seed),
        collate=VisionLanguageCollator(processor, cfg.prompt_text))
    evaluate.start(cfg.annotation_file, cfg.val_annotation_file)
    evaluate.perturb("test", conditions)
    run = start_evaluation_run(cfg, Path(__file__).name, evaluate, accelerator)

    run_in = precision(cfg.torch_dtype, accelerator.device)
    if run_in.note:
        accelerator.print(f"[precision] torch_dtype {run_in.note}")
    model = load_model(cfg.model_path, dtype=run_in.weights, device=accelerator.device, fast_paths=cfg.fast_paths)
    model.requires_grad_(False)
    attach_task1_lora(model, cfg.lora_checkpoint)
    for note in check_seed_lora_keys(cfg, get_visual(model), cfg.lora_checkpoint):
        accelerator.print(f"note: {note}")

    predict = answer_scorer(model, accelerator, (fake_id, real_id), processor.tokenizer)
    test, tuned = evaluate.run(predict, val_kwargs={"max_new_tokens": 0},
                               test_kwargs={"max_new_tokens": cfg.max_new_tokens})
    tuned = tuned["p_fake"]

    def score(run) -> dict:
        rows = prediction_rows(run.records, run.predictions, tuned, fake_word, real_word)
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
    rows = prediction_rows(records, scores, tuned, fake_word, real_word)
    csv_row = {"timestamp": datetime.now().isoformat(timespec="seconds"), "dataset": cfg.annotation_file, **metrics,
               "lora_checkpoint": cfg.lora_checkpoint, "model_path": cfg.model_path, "image_size": image_size,
               "fake_token": fake_word, "real_token": real_word,
               "num_skipped": skipped, "images_per_s": images_per_s, "peak_gib": peak_gib(), **leak_check.columns(),
               "format": test.format}
    csv_row.update(generated_columns(rows))
    outputs = finish_evaluation(
        run=run, out_dir=out_dir, output_json=cfg.output_json, csv_path=cfg.csv_path, csv_row=csv_row,
        csv_columns=CSV_COLUMNS, rows=rows, metrics=metrics, score_columns=["p_fake"], thresholds={"p_fake": tuned},
        title="Task 1 subtask 2: full model with the Task 1 visual LoRA answers Real/Fake",
        description={"dataset": cfg.annotation_file, "validation index (threshold)": cfg.val_annotation_file,
                     "checkpoint": cfg.lora_checkpoint, "model": cfg.model_path, "image_size": image_size,
                     "answer words": f"{fake_word} / {real_word}", **leak_check.columns()}, image_root=cfg.data_root,
        extra_sections=[robustness.section()] if robustness else ())
    print(evaluate.speed_line())
    print(printable_json({k: metrics[k] for k in ("samples", "auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned",
                                                  "f1@tuned", "threshold")}))
    print(outputs.summary())


if __name__ == "__main__":
    main()
