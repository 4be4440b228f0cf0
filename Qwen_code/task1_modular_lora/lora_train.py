"""Task 1 training: LoRA on selected ViT blocks + classification and evidence heads.

Only the vision tower is loaded (the language model never touches the accelerator); the saved
visual LoRA still plugs into the full model for subtask 2. Runs unchanged under
``accelerate launch --num_processes N`` (DDP).

    python Qwen_code/task1_modular_lora/lora_train.py --config Qwen_code/task1_modular_lora/config_lora.json
"""

from __future__ import annotations

import math
from pathlib import Path

from qwen_forensics.checkpoints import best_dir, epoch_dir
from qwen_forensics.config import load_config
from qwen_forensics.files import append_csv_row
from qwen_forensics.task_configs import Task1TrainConfig

VAL_LOG_METRICS = ("auroc", "pixel_iou", "pixel_f1", "score")
BEST_FOLDERS = {"auroc": best_dir("AUROC"), "pixel_iou": best_dir("IoU")}
TRAIN_LOG_COLUMNS = ["epoch", "step", "loss", "loss_cls", "loss_evi", "loss_sparse", "loss_contrast", "lr_head",
                     "lr_lora", *(f"val_{k}" for k in VAL_LOG_METRICS), "images_per_s"]


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task1TrainConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_lora.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from peft import inject_adapter_in_model
    from torch.utils.data import DataLoader
    from qwen_forensics.checkpoints import (load_training_state, resume_task1, save_task1_checkpoint, start_config_run,
                                            write_resolved_config)
    from qwen_forensics.config import precision
    from qwen_forensics.data import ForgeryDataset, ImageBatchCollator, MaskRule, load_split, vision_grid
    from qwen_forensics.evaluation import PixelCounter, guard_training_split, predict_heads, score_heads
    from qwen_forensics.model import (ForensicHeads, ForensicViT, LoraInputCast, format_targets, load_processor,
                                      load_vision_tower, make_lora_config, trainable_to_fp32, vision_block_targets)
    from qwen_forensics.report import TRAINING_HTML
    from qwen_forensics.training import (FirstBatch, preflight, ForensicLossWeights, autocast, best_logged,
                                         build_optimizer_and_schedule, forensic_loss, format_row, keep_best,
                                         loader_state, make_accelerator, optimizer_steps, param_groups,
                                         recompute_frozen_blocks, restore_loader_state, seed_everything, train_epoch,
                                         training_outputs, warm_up_first_batch, write_training_page)
    # LoRA on a block after the last tapped one gets no gradient from the heads: DDP must know.
    accelerator = make_accelerator(cfg.grad_accum,
                                   find_unused_parameters=max(cfg.lora_target_layers) > max(cfg.visual_layers))
    # Index files only, before anything is loaded or written: a validation index sharing footage
    # with the training index stops the run here (unless allow_val_overlap).
    leak_check = guard_training_split(cfg, say=accelerator.print)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.out_dir)
    mask_rule = MaskRule(cfg.mask_rule.rel, cfg.mask_rule.quantile)
    # ---- setup: data (every index problem is reported before anything loads or an earlier run moves aside)
    train_split = load_split(cfg.ann_train, cfg.data_root, cfg.on_bad_sample, accelerator)
    val_split = load_split(cfg.ann_val, cfg.data_root, cfg.on_bad_sample, accelerator) if cfg.ann_val else None
    # An earlier run in out_dir is moved to previous_runs/ (a resume continues its own run instead).
    run = start_config_run(cfg, Path(__file__).name, training_outputs(cfg.final_trained_heads),
                           appended=[cfg.train_log], resume=bool(cfg.resume), accelerator=accelerator,
                           say=accelerator.print)
    if accelerator.is_main_process:
        write_resolved_config(out_dir, cfg)
    train_split.write_skipped(out_dir / "skipped_train", accelerator)
    if val_split is not None:
        val_split.write_skipped(out_dir / "skipped_val", accelerator)
    train_records, val_records = train_split.records, val_split.records if val_split else None

    processor = load_processor(cfg.model_path, cfg.image_size)
    collate = ImageBatchCollator(processor)
    pin = accelerator.device.type == "cuda"  # pinned batches are copied to the GPU without a host wait
    train_set = ForgeryDataset(train_records, cfg.data_root, cfg.image_size, mask_rule)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                              collate_fn=collate, drop_last=False, persistent_workers=cfg.num_workers > 0,
                              pin_memory=pin)
    val_loader = (DataLoader(ForgeryDataset(val_records, cfg.data_root, cfg.image_size, mask_rule, with_mask=False,
                                            with_truth=True),
                             batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                             collate_fn=collate, pin_memory=pin) if val_records else None)

    # ---- setup: model (vision tower only) + LoRA + heads
    run_in = precision(cfg.amp_dtype, accelerator.device)
    if run_in.note:
        accelerator.print(f"[precision] amp_dtype {run_in.note}")
    # Straight onto the device: the optimizer then sees GPU parameters and uses the fused AdamW.
    visual = load_vision_tower(cfg.model_path, dtype=run_in.weights, device=accelerator.device,
                               fast_paths=cfg.fast_paths)
    visual.requires_grad_(False)
    if cfg.resume:
        heads, layers = resume_task1(visual, cfg.resume)
        if layers != cfg.visual_layers:
            raise SystemExit(f"resume: {cfg.resume} was trained with visual_layers {layers}, the config says "
                             f"{cfg.visual_layers}")
    else:
        targets = vision_block_targets(visual, cfg.lora_target_layers, cfg.lora_target_modules)
        accelerator.print(format_targets({"visual": targets}))
        inject_adapter_in_model(make_lora_config(targets, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                                 dropout=cfg.lora_dropout), visual)
        heads = ForensicHeads.from_vision_config(visual.config, cfg.visual_layers, cfg.fuse_dim)
    recomputed = recompute_frozen_blocks(visual, cfg.recompute_blocks, cfg.lora_target_layers, max(cfg.visual_layers))
    if recomputed:
        accelerator.print(f"recompute_blocks: ViT blocks {recomputed} recompute their activations in the backward")
    if len(recomputed) < cfg.recompute_blocks:
        accelerator.print(f"recompute_blocks={cfg.recompute_blocks}: only {len(recomputed)} frozen blocks lie between "
                          f"the first LoRA block and the last tapped block (all of them recomputed)")
    model = ForensicViT(visual, cfg.visual_layers, heads.to(accelerator.device))
    lora_params = trainable_to_fp32(visual)
    lora_cast = LoraInputCast(visual)

    # ---- setup: optimisation
    steps_total = optimizer_steps(math.ceil(len(train_loader) / accelerator.num_processes), cfg.grad_accum,
                                  cfg.epochs, cfg.max_steps)
    groups = param_groups({"heads": (list(heads.parameters()), cfg.lr_head), "lora": (lora_params, cfg.lr_lora)},
                          cfg.weight_decay)
    optimizer, scheduler = build_optimizer_and_schedule(groups, total_steps=steps_total,
                                                        warmup_ratio=cfg.warmup_ratio)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    weights = ForensicLossWeights(cfg.lambda_cls, cfg.lambda_evi, cfg.lambda_sparse, cfg.lambda_contrast,
                                  cfg.evi_alpha)

    step, start_epoch = 0, 0
    if cfg.resume:
        state = load_training_state(cfg.resume, optimizer, scheduler, process_index=accelerator.process_index)
        step, start_epoch = state["step"], state["epoch"] + 1
        restore_loader_state(train_loader, state["extra"])
        accelerator.print(f"resumed from {cfg.resume}: step {step}, next epoch {start_epoch}")

    # ---- train
    def loss_fn(batch):
        with autocast(accelerator.device, run_in.autocast, lora_cast):
            out = model(batch["pixel_values"], vision_grid(batch))
        return forensic_loss(out["cls_logit"].float(), out["heatmap_logit"].float(), batch["mask"], batch["labels"],
                             weights)

    # Before the first step: does the configured batch fit the card? Measured on one and two images.
    preflight(accelerator, model, train_set, collate, loss_fn, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
              planned_gib=cfg.gpu_memory_gib, batch_key="batch_size", accum_key="grad_accum",
              other_keys="recompute_blocks (frozen ViT blocks recomputed in the backward: about 0.4 GiB less per block "
                         "at batch 16)", say=accelerator.print)
    batches = FirstBatch(train_loader)
    # Kernel compilation and what cuBLAS/cuDNN pick per shape happen here, not in the first timed step.
    warm_up_first_batch(accelerator, model, batches, loss_fn)

    best = best_logged(cfg.train_log, run.run_id, BEST_FOLDERS) if cfg.resume else {}
    for epoch in range(start_epoch, cfg.epochs):
        if step >= steps_total:
            break
        model.train()
        step, stats = train_epoch(accelerator, model, batches, optimizer, scheduler, loss_fn,
                                  max_norm=cfg.max_norm, step=step, max_step=steps_total, desc=f"epoch {epoch}")
        # NaN validation columns without validation keep the CSV's columns the same for every run.
        row = {"epoch": epoch, "step": step, **stats, "lr_head": scheduler.get_last_lr()[0],
               "lr_lora": scheduler.get_last_lr()[-1], **{f"val_{k}": float("nan") for k in VAL_LOG_METRICS},
               **leak_check.columns(), **run.columns()}

        ckpt_dir = out_dir / epoch_dir(epoch)
        metrics = None
        if val_loader is not None:
            preds = predict_heads(model, val_loader, accelerator, run_in.autocast, len(val_records),
                                  PixelCounter(cfg.image_size, threshold=0.5))
            if accelerator.is_main_process:
                metrics, _ = score_heads(val_records, preds.p_fake, preds.counts)
                row.update({f"val_{k}": metrics[k] for k in VAL_LOG_METRICS})
        # Saved after the validation pass, which draws from the random generators (the loader's seed): a run
        # resumed from here continues with the generators of the uninterrupted run.
        save_task1_checkpoint(ckpt_dir, accelerator, model, cfg, optimizer, scheduler, step, epoch,
                              loader_state(train_loader))
        if metrics is not None:
            keep_best(metrics, best, BEST_FOLDERS, ckpt_dir, out_dir, accelerator.print)
        if accelerator.is_main_process:
            append_csv_row(cfg.train_log, row, TRAIN_LOG_COLUMNS)
            accelerator.print(format_row(row))
            write_training_page(out_dir, cfg.train_log, run.run_id, Path(__file__).name)
        accelerator.wait_for_everyone()

    save_task1_checkpoint(Path(cfg.final_trained_heads), accelerator, model, cfg, optimizer, scheduler, step,
                          cfg.epochs - 1, loader_state(train_loader))
    accelerator.print(f"final checkpoint: {cfg.final_trained_heads}\ntraining log: {cfg.train_log}\n"
                      f"training curves: {out_dir / TRAINING_HTML}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
