"""Task 3 training: hybrid LoRA (ViT blocks + merger + LM layers, one adapter), Task 1's heads on the
ViT features, and a fusion projector whose soft tokens the LM reads after the image.

Loss = loss_weights.lm * LM loss on the answer (word + end of turn) + the Task 1 head losses
(loss_weights.head_*, evi_alpha). Runs unchanged under ``accelerate launch --num_processes N``.

    python Qwen_code/task3_hybrid_lora/hybrid_train.py --config Qwen_code/task3_hybrid_lora/config_hybrid_train.json
"""

from __future__ import annotations

import math
from pathlib import Path

from qwen_forensics.checkpoints import best_dir, epoch_dir
from qwen_forensics.config import load_config
from qwen_forensics.files import append_csv_row
from qwen_forensics.task_configs import Task3TrainConfig

# Always present; learning rates of absent groups and, with ann_val, val_lm_auroc, val_head_auroc,
# val_pixel_iou, val_pixel_f1, val_score, val_head_score (hybrid_eval.py's lm_auroc ... score, head_score) follow.
TRAIN_LOG_COLUMNS = ["epoch", "step", "loss", "loss_lm", "loss_head", "loss_cls", "loss_evi", "loss_sparse",
                     "loss_contrast", "lr_heads", "images_per_s"]
BEST_FOLDERS = {"lm_auroc": best_dir("AUROC"), "pixel_iou": best_dir("IoU")}
SPEC_KEYS = ("visual_layers", "fusion_tokens", "head_verdict_prompt", "prompt", "fake_word", "real_word", "image_size")


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task3TrainConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_hybrid_train.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from torch.utils.data import DataLoader
    from qwen_forensics.checkpoints import (CheckpointPaths, answer_ids_for, load_hybrid_model, load_training_state,
                                            save_task3_checkpoint, start_config_run, write_resolved_config)
    from qwen_forensics.config import precision
    from qwen_forensics.data import ForgeryDataset, HybridCollator, MaskRule, hybrid_inputs, load_split
    from qwen_forensics.evaluation import (PixelCounter, guard_training_split, hybrid_scores, image_report,
                                           predict_hybrid, score_heads)
    from qwen_forensics.model import (HybridSpec, LoraInputCast, build_hybrid_model, format_targets, load_model,
                                      load_processor)
    from qwen_forensics.report import TRAINING_HTML
    from qwen_forensics.training import (FirstBatch, preflight, HybridLossWeights, autocast, best_logged,
                                         enable_gradient_checkpointing, format_row, hybrid_loss, hybrid_optimizer,
                                         keep_best, loader_state, make_accelerator, optimizer_steps,
                                         restore_loader_state, seed_everything, train_epoch, training_outputs,
                                         warm_up_first_batch, write_training_page)
    accelerator = make_accelerator(cfg.grad_accum)
    # Index files only, before anything is loaded or written: a validation index sharing footage
    # with the training index stops the run here (unless allow_val_overlap).
    leak_check = guard_training_split(cfg, say=accelerator.print)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.output_dir)
    mask_rule = MaskRule(cfg.mask_rule.rel, cfg.mask_rule.quantile)
    # ---- setup: data (every index problem is reported before anything loads or an earlier run moves aside)
    train_split = load_split(cfg.ann_train, cfg.data_root, cfg.on_bad_sample, accelerator)
    val_split = load_split(cfg.ann_val, cfg.data_root, cfg.on_bad_sample, accelerator) if cfg.ann_val else None
    # An earlier run in output_dir is moved to previous_runs/ (a resume continues its own run instead).
    run = start_config_run(cfg, Path(__file__).name,
                           training_outputs(cfg.lora_checkpoint, cfg.head_checkpoint, cfg.fusion_checkpoint),
                           appended=[cfg.train_log], resume=bool(cfg.resume), accelerator=accelerator,
                           say=accelerator.print)
    if accelerator.is_main_process:
        write_resolved_config(out_dir, cfg)
    train_split.write_skipped(out_dir / "skipped_train", accelerator)
    if val_split is not None:
        val_split.write_skipped(out_dir / "skipped_val", accelerator)
    train_records, val_records = train_split.records, val_split.records if val_split else None

    # ---- setup: model (full Qwen2.5-VL) + one LoRA adapter + heads + fusion projector
    # The processor first: it checks image_size against the model's patch size before weights load.
    processor = load_processor(cfg.base_model_path, cfg.image_size)
    run_in = precision(cfg.torch_dtype, accelerator.device, autocast=cfg.amp_dtype)
    if run_in.note:
        accelerator.print(f"[precision] torch_dtype / amp_dtype {run_in.note}")
    base = load_model(cfg.base_model_path, dtype=run_in.weights, device=accelerator.device, fast_paths=cfg.fast_paths)
    if cfg.resume:
        model, spec = load_hybrid_model(base, processor, CheckpointPaths.folder(cfg.resume), is_trainable=True)
        wanted = HybridSpec.from_train_config(cfg, spec.lora_targets)
        changed = [k for k in SPEC_KEYS if getattr(spec, k) != getattr(wanted, k)]
        if changed:
            raise SystemExit(f"resume: {cfg.resume} was trained with different {changed}; "
                             f"saved {[getattr(spec, k) for k in changed]}, config {[getattr(wanted, k) for k in changed]}")
    else:
        model, spec = build_hybrid_model(base, processor, cfg, say=accelerator.print)
    accelerator.print(format_targets(spec.lora_targets))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    answer_ids = answer_ids_for(processor, spec)
    lora_cast = LoraInputCast(model.base)

    # ---- setup: loaders (the prompt comes from the model)
    answers = {0: cfg.target_text.real, 1: cfg.target_text.fake}
    pin = accelerator.device.type == "cuda"  # pinned batches are copied to the GPU without a host wait
    train_set = ForgeryDataset(train_records, cfg.data_root, cfg.image_size, mask_rule)
    collate = HybridCollator(processor, model.prompt, answers)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                              collate_fn=collate, drop_last=False,
                              persistent_workers=cfg.num_workers > 0, pin_memory=pin)
    val_loader = (DataLoader(ForgeryDataset(val_records, cfg.data_root, cfg.image_size, mask_rule, with_mask=False,
                                            with_truth=True),
                             batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                             collate_fn=HybridCollator(processor, model.prompt), pin_memory=pin)
                  if val_records else None)

    # ---- setup: optimisation
    steps_total = optimizer_steps(math.ceil(len(train_loader) / accelerator.num_processes), cfg.grad_accum,
                                  cfg.epochs, cfg.max_steps)
    optimizer, scheduler = hybrid_optimizer(model, cfg, steps_total)
    group_names = [g["name"] for g in optimizer.param_groups]
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    weights = HybridLossWeights.from_config(cfg)

    step, start_epoch = 0, 0
    if cfg.resume:
        state = load_training_state(cfg.resume, optimizer, scheduler, process_index=accelerator.process_index)
        step, start_epoch = state["step"], state["epoch"] + 1
        restore_loader_state(train_loader, state["extra"])
        accelerator.print(f"resumed from {cfg.resume}: step {step}, next epoch {start_epoch}")

    # ---- train
    def loss_fn(batch):
        # The collator keeps only the answer positions' logits (labels and logits_to_keep, on the host).
        with autocast(accelerator.device, run_in.autocast, lora_cast):
            out = model(**hybrid_inputs(batch), logits_to_keep=batch["logits_to_keep"])
        return hybrid_loss(out, batch, weights)

    # Before the first step: does the configured batch fit the card? Measured on one and two images.
    preflight(accelerator, model, train_set, collate, loss_fn, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
              planned_gib=cfg.gpu_memory_gib, batch_key="batch_size", accum_key="grad_accum",
              other_keys="gradient_checkpointing true (activations recomputed in the backward)", say=accelerator.print)
    batches = FirstBatch(train_loader)
    # Kernel compilation and what cuBLAS/cuDNN pick per shape happen here, not in the first timed step.
    warm_up_first_batch(accelerator, model, batches, loss_fn)

    best = best_logged(cfg.train_log, run.run_id, BEST_FOLDERS) if cfg.resume else {}
    for epoch in range(start_epoch, cfg.epochs):
        if step >= steps_total:
            break
        model.train()
        step, stats = train_epoch(accelerator, model, batches, optimizer, scheduler, loss_fn,
                                  max_norm=cfg.max_norm, step=step, max_step=steps_total, desc=f"epoch {epoch}",
                                  shown=("total", "lm", "head"))
        lrs = dict(zip(group_names, scheduler.get_last_lr()))
        row = {"epoch": epoch, "step": step, **stats,
               **{f"lr_{name}": lrs[name] for name in ("heads", "fusion", "lora_vision", "lora_lm") if name in lrs},
               **leak_check.columns(), **run.columns()}

        ckpt_dir = out_dir / epoch_dir(epoch)
        metrics = None
        if val_loader is not None:
            preds = predict_hybrid(accelerator.unwrap_model(model), val_loader, accelerator, answer_ids, run_in.autocast,
                                   len(val_records), counter=PixelCounter(cfg.image_size, threshold=0.5))
            if accelerator.is_main_process:
                labels = [r.label for r in val_records]
                lm = image_report(labels, preds.p_fake_lm)
                heads, _ = score_heads(val_records, preds.p_fake_head, preds.counts)
                # The names and definitions of hybrid_eval.py's CSV, with a val_ prefix in the log.
                metrics = {"lm_auroc": lm["auroc"], "head_auroc": heads["auroc"], "pixel_iou": heads["pixel_iou"],
                           "pixel_f1": heads["pixel_f1"], **hybrid_scores(lm["auroc"], heads)}
                row.update({f"val_{k}": v for k, v in metrics.items()})
        # Saved after the validation pass, which draws from the random generators (the loader's seed): a run
        # resumed from here continues with the generators of the uninterrupted run.
        save_task3_checkpoint(CheckpointPaths.folder(ckpt_dir), ckpt_dir, accelerator, model, spec, cfg, optimizer,
                              scheduler, step, epoch, loader_state(train_loader))
        if metrics is not None:
            keep_best(metrics, best, BEST_FOLDERS, ckpt_dir, out_dir, accelerator.print)
        if accelerator.is_main_process:
            append_csv_row(cfg.train_log, row, TRAIN_LOG_COLUMNS)
            accelerator.print(format_row(row))
            write_training_page(out_dir, cfg.train_log, run.run_id, Path(__file__).name)
        accelerator.wait_for_everyone()

    final = CheckpointPaths.from_config(cfg)
    save_task3_checkpoint(final, final.fusion_file.parent, accelerator, model, spec, cfg, optimizer, scheduler, step,
                          cfg.epochs - 1, loader_state(train_loader))
    accelerator.print(f"final adapter: {final.adapter_dir}\nfinal heads: {final.heads_file}\n"
                      f"final fusion: {final.fusion_file}\ntraining log: {cfg.train_log}\n"
                      f"training curves: {out_dir / TRAINING_HTML}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
