"""Task 2 training: LoRA on ViT blocks + the merger MLP, supervised by the LM loss on the answer.

The full Qwen2.5-VL model is loaded; LoRA goes on exactly the vision modules the config names
(``lora_target_blocks`` x ``lora_target_modules`` plus ``lora_extra_modules``), everything else is
frozen. Each sample is the chat prompt with its image followed by the answer word ("Fake"/"Real")
and the end-of-turn token; only those two tokens carry labels. Training runs on Hugging Face
``Trainer`` with ``training_args`` as written (``resume_from_checkpoint`` there resumes: a folder, or
true for the newest checkpoint in ``output_dir``), so it works the same under ``torchrun`` and
``accelerate launch``. The adapter is saved in PEFT format to ``save_lora_path`` with
its config recording the image geometry, prompt and answer words, which lora_infer.py
uses by default.

    python Qwen_code/task2_lm_lora/LORA.py --config Qwen_code/task2_lm_lora/config_lora_trainer.json [--root DIR]
    torchrun --nproc_per_node 2 Qwen_code/task2_lm_lora/LORA.py --root DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qwen_forensics.config import load_config_and_paths
from qwen_forensics.files import printable_json
from qwen_forensics.task_configs import Task2TrainConfig

if TYPE_CHECKING:
    from qwen_forensics.data import Task2ImageDataset


def mapped_images(data, cfg: Task2TrainConfig, root: str | None) -> str:
    """The folder a map.py output's images are read from (map.py's record unless the config names
    ``data_root``), checked before any model loads."""
    from qwen_forensics.data import check_images, images_root
    folder, note = images_root(data, cfg.data_root, root)
    if note:
        print(f"[config] {note}")
    check_images(data, folder)
    return folder


def evaluation_set(cfg: Task2TrainConfig, setup, root: str | None, train_images: str) -> Task2ImageDataset | None:
    """``test_dataset`` as the Trainer's evaluation set: a map.py output (same prompt and answers as the
    training set), or the earlier LORA.py's object, an index evaluated as it is (its images under its
    own ``data_root``, else the config's, else the training images' folder)."""
    from qwen_forensics.data import (Task2ImageDataset, apply_bad_sample_policy, load_index, read_task2_dataset,
                                     validate_records)
    spec = cfg.test_dataset
    if spec is None:
        return None
    if isinstance(spec, str):
        data = read_task2_dataset(spec)
        if data.setup(cfg.image_size) != setup:
            raise SystemExit(f"test_dataset {spec} was mapped with a different prompt or answer words than "
                             f"{cfg.train_dataset_path}; map both with the same config_map.json settings")
        return Task2ImageDataset.from_samples(data.samples, mapped_images(data, cfg, root), setup.image_size)
    data_root = spec.data_root or cfg.data_root or train_images
    report = validate_records(load_index(spec.annotation_file), data_root, source=spec.annotation_file)
    records = apply_bad_sample_policy(report, "fail", Path(cfg.out_dir))[: spec.dataset_limit]
    return Task2ImageDataset.from_records(records, data_root, setup.image_size)


def main(argv: list[str] | None = None) -> None:
    cfg, root = load_config_and_paths(Task2TrainConfig, description=__doc__, argv=argv,
                                      default_config=Path(__file__).with_name("config_lora_trainer.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from transformers import Trainer, TrainingArguments
    from qwen_forensics.checkpoints import save_adapter, start_config_run, write_resolved_config
    from qwen_forensics.config import precision
    from qwen_forensics.data import Task2ImageDataset, TrainerCollator, make_collator, read_task2_dataset
    from qwen_forensics.model import (LoraInputCast, attach_lora, format_targets, load_model, load_processor,
                                      vision_inputs_require_grad)
    from qwen_forensics.report import TRAINING_HTML, write_training_report
    from qwen_forensics.training import (preflight_trainer, resolved_training_config, seed_everything, speed_line,
                                         trainer_arguments, warm_up_trainer)

    # ---- setup: data (the training set fixes the prompt and the answer words)
    train_data = read_task2_dataset(cfg.train_dataset_path)
    setup = train_data.setup(cfg.image_size)
    train_images = mapped_images(train_data, cfg, root)
    eval_set = evaluation_set(cfg, setup, root, train_images)
    # The processor checks image_size against the model's patch size before any weights load.
    processor = load_processor(cfg.base_model_path, setup.image_size)

    # ---- setup: Trainer arguments as the user wrote them, adapted to this transformers and machine
    trainer_kwargs, notes = trainer_arguments(cfg.training_args, root, Path(cfg.out_dir))
    if eval_set is not None and trainer_kwargs.get("eval_strategy", "no") == "no":
        trainer_kwargs["eval_strategy"] = "epoch"
        notes.append("test_dataset given and training_args sets no eval_strategy: evaluating (eval_loss) after "
                     "every epoch")
    resume = trainer_kwargs.pop("resume_from_checkpoint", None)
    args = TrainingArguments(**trainer_kwargs)
    # An earlier run's adapter and Trainer checkpoints are moved to previous_runs/ (a resume continues its run).
    with args.main_process_first(local=False, desc="run folder"):
        if args.process_index == 0:
            start_config_run(cfg, Path(__file__).name, [cfg.save_lora_path, args.output_dir,
                                                         str(Path(cfg.out_dir) / TRAINING_HTML)], resume=bool(resume))
    if args.process_index == 0:
        for note in notes:
            print(f"[config] {note}")
        write_resolved_config(args.output_dir, resolved_training_config(cfg, setup, trainer_kwargs))

    # ---- setup: model. Weights in the configured dtype on GPU (CPU runs stay float32); straight onto
    # this process's device, which spares a host copy of the model per torchrun process.
    run_in = precision(cfg.torch_dtype, args.device)
    if run_in.note and args.process_index == 0:
        print(f"[precision] torch_dtype {run_in.note}")
    model = load_model(cfg.base_model_path, dtype=run_in.weights, device=args.device, fast_paths=cfg.fast_paths)
    model.config.use_cache = False
    # Trainer seeds only when it is built; the LoRA A matrices are drawn before that.
    seed_everything(args.seed)
    model, targets = attach_lora(model, cfg)
    if args.gradient_checkpointing:
        vision_inputs_require_grad(model)
    if args.bf16 or args.fp16:
        # Trainer runs every forward (training and evaluation) under autocast, which makes PEFT's
        # fp32 copy of each LoRA input redundant (see model.lora.LoraInputCast).
        LoraInputCast(model).set(False)
    trainer = Trainer(model=model, args=args, data_collator=TrainerCollator(make_collator(processor, setup, train=True)),
                      train_dataset=Task2ImageDataset.from_samples(train_data.samples, train_images, setup.image_size),
                      eval_dataset=eval_set)
    if trainer.is_world_process_zero():
        print(format_targets(targets))
        trainer.model.print_trainable_parameters()

    # ---- train
    if args.device.type == "cuda":
        # Before the first step: does the configured batch fit the card? Measured on one and two images.
        preflight_trainer(trainer, cfg.gpu_memory_gib, say=print if trainer.is_world_process_zero() else lambda _: None)
        seconds = warm_up_trainer(trainer)
        if trainer.is_world_process_zero():
            print(f"[warm-up] one throwaway step on the first batch (kernel compilation, GEMM selection): "
                  f"{seconds:.2f} s")
    result = trainer.train(resume_from_checkpoint=resume)

    # ---- save: the adapter (PEFT format) and the prompt setup lora_infer.py reads back
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, cfg.save_lora_path)
        write_resolved_config(cfg.save_lora_path, resolved_training_config(cfg, setup, trainer_kwargs))
        print(printable_json(result.metrics))
        seconds = result.metrics["train_runtime"]
        print(speed_line(round(result.metrics["train_samples_per_second"] * seconds), seconds, "training (Trainer loop)"))
        # The Trainer's log (loss every logging_steps, eval_loss per evaluation) as curves over the steps.
        page = write_training_report(Path(cfg.out_dir) / TRAINING_HTML, trainer.state.log_history,
                                     title=f"Training: {Path(__file__).name}", x_key="step",
                                     description={"script": Path(__file__).name, "adapter": cfg.save_lora_path,
                                                  "logging_steps": args.logging_steps})
        print(f"adapter: {cfg.save_lora_path}\nTrainer checkpoints: {args.output_dir}\ntraining curves: {page}")
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
