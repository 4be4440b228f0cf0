"""Task 2 training through LORA.py itself (its ``main``, in this process, with a recording Trainer):
vision LoRA gradients under gradient checkpointing, resume_from_checkpoint, the saved adapter."""

from __future__ import annotations

import json
import shutil
from unittest import mock
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback

from qwen_forensics.checkpoints.adapters import load_adapter_strict
from qwen_forensics.checkpoints.task2 import adapter_setup
from qwen_forensics.config.loading import parse_config
from qwen_forensics.data.collate import TrainerCollator, make_collator, model_inputs
from qwen_forensics.data.dataset import Task2ImageDataset
from qwen_forensics.data.lm_records import read_task2_dataset, run_map
from qwen_forensics.data.records import load_index
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation.predictions import answer_logits
from qwen_forensics.model.loader import get_visual, load_model, load_processor
from qwen_forensics.prompts import answer_token_ids
from qwen_forensics.task_configs import Task2MapConfig, Task2TrainConfig
from qwen_forensics.training.hf_trainer import warm_up_trainer
from scripts import CODE, load_script

TASK2_DIR = CODE / "task2_lm_lora"
LORA_MODULES_PER_BLOCK = 5


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task2_train_root")
    build_tiny_model(root / "Qwen2.5-VL-7B-Instruct")
    make_demo_dataset(root, n_train=40, n_test=8, frames_per_video=2)
    run_map(parse_config(Task2MapConfig, json.loads((TASK2_DIR / "config_map.json").read_text()), root=str(root)),
            load_processor(str(root / "Qwen2.5-VL-7B-Instruct")), progress=False)
    return root


def quick_sets(**overrides) -> list[str]:
    """Short-run ``--set`` overrides of the shipped trainer config (``training_args.x`` reaches into the dict)."""
    quick = {"image_size": 56, "training_args.bf16": False, "training_args.per_device_train_batch_size": 2,
             "training_args.gradient_accumulation_steps": 1, "training_args.warmup_ratio": 0.0,
             "training_args.lr_scheduler_type": "constant", "training_args.logging_steps": 1,
             "training_args.disable_tqdm": True, "training_args.dataloader_num_workers": 0, **overrides}
    return [f"{k}={json.dumps(v)}" for k, v in quick.items()]


def train_config(root: Path, **overrides) -> Task2TrainConfig:
    """The config LORA.py resolves from the same overrides."""
    shipped = json.loads((TASK2_DIR / "config_lora_trainer.json").read_text())
    return parse_config(Task2TrainConfig, shipped, overrides=quick_sets(**overrides), root=str(root))


def run_lora(root: Path, callbacks=(), warm: bool = False, **overrides) -> Trainer:
    """LORA.py's ``main`` with the quick overrides; returns its Trainer (with ``callbacks`` added and the
    ``resume_from_checkpoint`` that ``train`` received recorded as ``resumed_from``). ``warm``: the
    CUDA-only warm-up step runs right before ``train`` (as the script does on a GPU)."""
    lora = load_script("LORA")
    made = []

    class RecordingTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=list(callbacks), **kwargs)
            made.append(self)

        def train(self, resume_from_checkpoint=None, **kwargs):
            self.resumed_from = resume_from_checkpoint
            if warm:
                self.warm_seconds = warm_up_trainer(self)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    argv = ["--root", str(root)]
    for value in quick_sets(**overrides):
        argv += ["--set", value]
    # LORA.py imports Trainer inside main: patched where it comes from.
    with mock.patch("transformers.Trainer", RecordingTrainer):
        lora.main(argv)
    trainer, = made
    return trainer


class GradProbe(TrainerCallback):
    """Records, before every optimizer step, the gradient magnitude of each LoRA tensor."""

    def __init__(self):
        self.steps: list[dict[str, float | None]] = []
        self.checkpointing: list[bool] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({name: None if p.grad is None else float(p.grad.abs().sum())
                           for name, p in model.named_parameters() if "lora_" in name})
        self.checkpointing.append(all(block.gradient_checkpointing for block in get_visual(model).blocks))


@pytest.mark.parametrize("reentrant", [False, True])
def test_every_vision_lora_tensor_gets_gradients_with_checkpointing(root, tmp_path, reentrant):
    overrides = {"training_args.output_dir": str(tmp_path / "ckpt"), "training_args.max_steps": 2,
                 "training_args.learning_rate": 0.01, "training_args.save_strategy": "no",
                 "training_args.gradient_checkpointing": True}
    if reentrant:
        overrides["training_args.gradient_checkpointing_kwargs"] = {"use_reentrant": True}
    cfg = train_config(root, **overrides)
    probe = GradProbe()
    run_lora(root, callbacks=[probe], **overrides)

    assert probe.checkpointing == [True, True]
    first, second = probe.steps
    blocks = cfg.lora_target_blocks
    assert len(first) == 2 * (len(blocks) * LORA_MODULES_PER_BLOCK + len(cfg.lora_extra_modules))
    assert any(".merger.mlp.0." in n for n in first) and any(".merger.mlp.2." in n for n in first)
    assert {int(n.split(".blocks.")[1].split(".")[0]) for n in first if ".blocks." in n} == set(blocks)
    # LoRA B starts at zero, so step 1 moves only B (A's gradient is B^T times something); from step 2
    # on every tensor, in every targeted block and the merger, must receive a gradient.
    assert all(g for n, g in first.items() if "lora_B" in n)
    zero = sorted(n for n, g in second.items() if not g)
    assert not zero, f"LoRA tensors without gradient: {zero}"


def test_resume_from_checkpoint_continues_the_run(root, tmp_path):
    out = tmp_path / "ckpt"
    base = {"training_args.output_dir": str(out), "training_args.save_steps": 1,
            "training_args.save_strategy": "steps", "training_args.gradient_checkpointing": False,
            "save_lora_path": str(tmp_path / "adapter")}
    run_lora(root, **base, **{"training_args.max_steps": 2})
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    class StepCounter(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    counter = StepCounter()
    trainer = run_lora(root, callbacks=[counter], **base,
                       **{"training_args.max_steps": 3, "training_args.resume_from_checkpoint": True})
    assert trainer.resumed_from is True
    assert counter.steps == [3]
    assert trainer.state.global_step == 3


def test_images_come_from_the_data_root_map_recorded(root, tmp_path, capsys, monkeypatch):
    """The trainer config names no data_root: LORA.py opens the images where map.py found them (here a
    folder other than <root>/data); a data_root in the config replaces that, with a note; images that are
    not there stop the run before any model loads, naming the recorded root, its file and the key."""
    elsewhere = tmp_path / "my data"
    shutil.copytree(root / "data", elsewhere)
    mapped = tmp_path / "mapped"
    map_cfg = parse_config(Task2MapConfig, {"base_model_path": str(root / "Qwen2.5-VL-7B-Instruct"),
                                            "annotation_file": str(elsewhere / "trainingset2/train_idx.json"),
                                            "data_root": str(elsewhere), "out_dir": str(mapped)})
    run_map(map_cfg, load_processor(str(root / "Qwen2.5-VL-7B-Instruct")), progress=False)
    quick = {"train_dataset_path": str(mapped / "train.jsonl"), "training_args.output_dir": str(tmp_path / "hf"),
             "training_args.max_steps": 1, "training_args.save_strategy": "no",
             "training_args.gradient_checkpointing": False, "save_lora_path": str(tmp_path / "adapter")}

    trainer = run_lora(root, **quick)
    assert trainer.train_dataset.data_root == elsewhere
    assert f"images are read from the data root map.py recorded, {elsewhere}" in capsys.readouterr().out

    trainer = run_lora(root, data_root=str(root / "data"), **quick)
    assert trainer.train_dataset.data_root == root / "data"
    assert (f"data_root {root / 'data'} replaces the data root map.py recorded for {mapped / 'train.jsonl'} "
            f"({elsewhere}, in {mapped / 'train.source.json'})") in capsys.readouterr().out

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("qwen_forensics.model.loader.load_processor", no_model)
    monkeypatch.setattr("qwen_forensics.model.loader.load_model", no_model)
    shutil.rmtree(elsewhere / "trainingset2" / "image")
    with pytest.raises(SystemExit) as stop:
        run_lora(root, **quick)
    message = str(stop.value)
    assert message.startswith("stopped before loading any model: 32 of 32 images of the training set")
    assert f"are not under {elsewhere} (the data root map.py recorded in {mapped / 'train.source.json'}" in message
    assert "Set data_root in the config" in message


def _p_fake(model, root: Path, setup, base_model_path: str) -> torch.Tensor:
    """P(fake) of the demo test images, as lora_infer.py computes it (one batched forward)."""
    records = load_index(root / "data/testset2/annotation.json")
    dataset = Task2ImageDataset.from_records(records, root / "data", setup.image_size)
    processor = load_processor(base_model_path, setup.image_size)
    batch = make_collator(processor, setup, train=False)([dataset[i] for i in range(len(dataset))])
    ids = answer_token_ids(processor, setup.fake_word, setup.real_word)
    model.eval()
    with torch.no_grad():
        return torch.softmax(answer_logits(model, batch, *ids), dim=-1)[:, 0]


def test_saved_adapter_reproduces_the_trained_model(root, tmp_path):
    overrides = {"training_args.output_dir": str(tmp_path / "ckpt"), "training_args.max_steps": 3,
                 "training_args.learning_rate": 0.01, "training_args.save_strategy": "no",
                 "training_args.gradient_checkpointing": False, "save_lora_path": str(tmp_path / "adapter")}
    cfg = train_config(root, **overrides)
    trainer = run_lora(root, **overrides)
    setup = adapter_setup(cfg.save_lora_path)
    assert setup == read_task2_dataset(cfg.train_dataset_path).setup(56) and setup.image_size == 56
    trained = _p_fake(trainer.model, root, setup, cfg.base_model_path)
    untouched = _p_fake(load_model(cfg.base_model_path, dtype="float32"), root, setup, cfg.base_model_path)
    assert (trained - untouched).abs().max() > 1e-3, "training did not change the answer probabilities"

    fresh = load_model(cfg.base_model_path, dtype="float32")
    loaded = load_adapter_strict(fresh, cfg.save_lora_path)
    assert loaded.root == "" and loaded.num_tensors == 2 * (4 * 5 + 2)
    torch.testing.assert_close(_p_fake(fresh, root, setup, cfg.base_model_path), trained, atol=1e-4, rtol=0)
    peft = PeftModel.from_pretrained(load_model(cfg.base_model_path, dtype="float32"), cfg.save_lora_path)
    torch.testing.assert_close(_p_fake(peft, root, setup, cfg.base_model_path), trained, atol=1e-4, rtol=0)


def test_answer_only_logits_give_the_full_vocabulary_loss(root):
    """Projecting only the answer positions (what the Trainer collator sends) leaves the loss unchanged."""
    cfg = train_config(root)
    data = read_task2_dataset(cfg.train_dataset_path)
    setup = data.setup(cfg.image_size)
    model = load_model(cfg.base_model_path, dtype="float32")
    processor = load_processor(cfg.base_model_path, setup.image_size)
    dataset = Task2ImageDataset.from_samples(data.samples[:4], data.data_root, setup.image_size)
    full = model_inputs(make_collator(processor, setup, train=True)([dataset[i] for i in range(4)]))
    cut = TrainerCollator(make_collator(processor, setup, train=True))([dataset[i] for i in range(4)])
    assert cut["logits_to_keep"] == 3 and cut["labels"].shape[1] == 3
    with torch.no_grad():
        want = model(**full).loss
        got = model(**cut)
    assert got.logits.shape[1] == 3
    torch.testing.assert_close(got.loss, want, rtol=1e-6, atol=1e-6)


def test_warm_up_step_leaves_the_trained_adapter_unchanged(root, tmp_path):
    """The throwaway step before train() (on a GPU, kernel compilation) draws no random number the
    run would see (LoRA dropout is on) and leaves no gradient: the adapter is the one without it."""
    overrides = {"training_args.max_steps": 2, "training_args.learning_rate": 0.01,
                 "training_args.save_strategy": "no", "training_args.gradient_checkpointing": False}
    runs = []
    for warm in (False, True):
        trainer = run_lora(root, warm=warm, **overrides, **{"training_args.output_dir": str(tmp_path / f"ckpt{warm}"),
                                                            "save_lora_path": str(tmp_path / f"adapter{warm}")})
        runs.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n})
    assert trainer.warm_seconds > 0 and runs[0].keys() == runs[1].keys() and runs[0]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
