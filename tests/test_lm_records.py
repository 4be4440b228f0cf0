"""``data.lm_records``: Task 2's training-set format and resumable map job, its image dataset, the
prompt setup shared by training and evaluation (``checkpoints.task2``), the label mask on
native-resolution batches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_forensics.checkpoints.task2 import adapter_setup, resolve_infer_setup
from qwen_forensics.checkpoints.tensors import write_resolved_config
from qwen_forensics.config.loading import parse_config
from qwen_forensics.data import lm_records
from qwen_forensics.data.collate import IGNORE_INDEX, TrainerCollator, make_collator
from qwen_forensics.data.dataset import Task2ImageDataset
from qwen_forensics.data.lm_records import read_task2_dataset, run_map
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.model.loader import load_processor
from qwen_forensics.prompts import DEFAULT_PROMPT, PromptSetup, answer_token_ids
from qwen_forensics.task_configs import Task2InferConfig, Task2MapConfig, Task2TrainConfig
from qwen_forensics.training import hf_trainer
from scripts import CODE

MAX_BYTES_PER_RECORD = 700


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A user-layout root: the tiny model where the shipped configs expect the 7B, plus demo data."""
    root = tmp_path_factory.mktemp("task2_root")
    build_tiny_model(root / "Qwen2.5-VL-7B-Instruct")
    make_demo_dataset(root)
    return root


def map_config(root: Path, **overrides) -> Task2MapConfig:
    shipped = json.loads((CODE / "task2_lm_lora" / "config_map.json").read_text())
    return parse_config(Task2MapConfig, shipped, overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                        root=str(root))


def map_records(cfg: Task2MapConfig):
    """What map.py runs: the map job with the model's processor."""
    return run_map(cfg, load_processor(cfg.base_model_path), workers=2, progress=False)


@pytest.fixture(scope="module")
def mapped(root):
    result, = map_records(map_config(root))
    return result, read_task2_dataset(result.final_path)


def test_map_writes_the_documented_format(root, mapped):
    result, data = mapped
    index = json.loads((root / "data/trainingset2/train_idx.json").read_text())
    assert result.records == len(index) == len(data.samples) and result.skipped == 0
    assert result.final_path == str(root / "task2_lm_lora/datasets/train.jsonl")
    assert data.prompt_text == DEFAULT_PROMPT and data.answers == {0: "Real", 1: "Fake"}
    first = json.loads(Path(result.final_path).read_text().splitlines()[0])
    assert first["image_path"] == index[0]["image_path"] and first["label"] == index[0]["label"]
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "image", "image": index[0]["image_path"]},
                                     {"type": "text", "text": DEFAULT_PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Fake" if index[0]["label"] else "Real"}]},
    ]
    sample = data.samples[0]
    image_file = root / "data" / sample.image_path
    assert lm_records.file_digest(image_file) == (sample.file_size, sample.sha256)
    with Image.open(image_file) as img:
        assert sample.image_hw == (img.height, img.width)
    assert result.bytes_per_record < MAX_BYTES_PER_RECORD


def test_dataset_items_and_changed_image(root, mapped, tmp_path):
    _, data = mapped
    dataset = Task2ImageDataset.from_samples(data.samples[:2], root / "data", 112)
    item = dataset[1]
    assert item["image"].size == (112, 112) and item["label"] == data.samples[1].label and item["position"] == 1
    native = Task2ImageDataset.from_samples(data.samples[:1], root / "data", None)[0]["image"]
    assert native.size == data.samples[0].image_hw[::-1]

    copy_root = tmp_path / "data"
    target = copy_root / data.samples[0].image_path
    target.parent.mkdir(parents=True)
    original = (root / "data" / data.samples[0].image_path).read_bytes()
    target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="changed after map.py"):
        Task2ImageDataset.from_samples(data.samples[:1], copy_root, 112)[0]


def _write_line_variant(path: Path, source: Path, edit) -> Path:
    lines = source.read_text().splitlines()
    obj = json.loads(lines[1])
    edit(obj)
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.pop("sha256"), "train.jsonl:2: keys"),
    (lambda o: o.update(label=3), "label 3 is not 0 or 1"),
    (lambda o: o["messages"][0]["content"][0].update(image="other.jpg"), "is not image_path"),
    (lambda o: o["messages"].pop(), r"messages must be \[user"),
    (lambda o: o["messages"][1]["content"][0].update(text=1), "with string values"),
    (lambda o: o.update(sha256="x" * 64), "not a hex SHA-256"),
    (lambda o: o.update(file_size="12"), "must be integers"),
    (lambda o: o["messages"][0]["content"][1].update(text="Other prompt"), "2 different prompts"),
    (lambda o: o["messages"][1]["content"][0].update(text="Forged" if o["label"] else "Genuine"), "exactly one"),
])
def test_reader_rejects_edited_records(mapped, tmp_path, edit, message):
    result, _ = mapped
    bad = _write_line_variant(tmp_path / "train.jsonl", Path(result.final_path), edit)
    with pytest.raises(ValueError, match=message):
        read_task2_dataset(bad)


# ----------------------------------------------------------------- map on 1,000 records, resumable
def _stand_in_index(data_root: Path, count: int) -> Path:
    """``count`` ForgeryNet-style records with tiny stand-in JPEGs (masks for fakes, "HxW" for reals)."""
    rng = np.random.default_rng(0)
    (data_root / "trainingset2/image").mkdir(parents=True)
    (data_root / "trainingset2/spatial_localize").mkdir()
    records = []
    for i in range(count):
        h, w = (8, 12) if i % 3 else (12, 8)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:
            name = f"{1 + i % 15}__{i:032x}__{i + 7:032x}__frame{i:05d}.jpg"
            Image.fromarray(pixels).save(data_root / "trainingset2/image" / name, quality=95)
            Image.fromarray(pixels[..., 0]).save(data_root / "trainingset2/spatial_localize" / name)
            records.append({"image_path": f"trainingset2/image/{name}",
                            "mask_path": f"trainingset2/spatial_localize/{name}", "label": 1})
        else:
            name = f"image__{i % 40}__{i:032x}__frame{i:05d}.jpg"
            Image.fromarray(pixels).save(data_root / "trainingset2/image" / name, quality=95)
            records.append({"image_path": f"trainingset2/image/{name}", "mask_path": f"{h}x{w}", "label": 0})
    index = data_root / "trainingset2/train_idx.json"
    index.write_text(json.dumps(records, indent=2))
    return index


def test_map_1000_records_bounded_disk_and_resume(root, tmp_path, monkeypatch, capsys):
    data_root = tmp_path / "data"
    _stand_in_index(data_root, 1000)
    common = dict(data_root=str(data_root), annotation_file=str(data_root / "trainingset2/train_idx.json"),
                  map_batch_size=100)
    full, = map_records(map_config(root, **common, batch_output_dir=str(tmp_path / "full/batches"),
                                   final_dataset_path=str(tmp_path / "full/train.jsonl")))
    assert (full.records, full.batches_total, full.batches_written) == (1000, 10, list(range(10)))
    with capsys.disabled():
        print(f"\nmap: {full.bytes_per_record:.0f} bytes/record in the training set "
              f"(+{full.batch_bytes / full.records:.0f} in batch files)")
    assert full.bytes_per_record < MAX_BYTES_PER_RECORD and full.batch_bytes == full.final_bytes

    cfg = map_config(root, **common, batch_output_dir=str(tmp_path / "run/batches"),
                     final_dataset_path=str(tmp_path / "run/train.jsonl"))
    real_build = lm_records._build_batch
    calls = []

    def crash_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated kill during batch 3")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(lm_records, "_build_batch", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        map_records(cfg)
    monkeypatch.setattr(lm_records, "_build_batch", real_build)
    batch_dir = Path(cfg.batch_output_dir)
    assert sorted(p.name for p in batch_dir.glob("batch_*.jsonl")) == [f"batch_{k:05d}.jsonl" for k in range(3)]
    assert not Path(cfg.final_dataset_path).exists()
    # A kill during a write leaves only temporary files, which the rerun discards.
    (batch_dir / ".batch_00003.jsonl.99999.tmp").write_text('{"index": 3')
    (tmp_path / "run" / ".train.jsonl.99999.tmp").write_text('{"index": 0')
    before = {p.name: p.stat().st_mtime_ns for p in batch_dir.glob("batch_*.jsonl")}

    resumed, = map_records(cfg)
    assert resumed.batches_written == list(range(3, 10))
    assert {name: (batch_dir / name).stat().st_mtime_ns for name in before} == before
    assert not list(batch_dir.glob(".*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))
    assert Path(cfg.final_dataset_path).read_bytes() == Path(full.final_path).read_bytes()

    (batch_dir / "batch_00009.jsonl").unlink()
    assert map_records(cfg)[0].batches_written == [9]
    assert Path(cfg.final_dataset_path).read_bytes() == Path(full.final_path).read_bytes()

    with pytest.raises(ValueError, match=r"different map job .*\['map_batch_size'\]"):
        map_records(replace(cfg, map_batch_size=50))


def test_map_rejects_multi_token_answers(root):
    with pytest.raises(ValueError, match="'Forgery' is not a single token"):
        map_records(map_config(root, fake_token="Forgery"))


# ------------------------------------------------------------- one prompt setup for training and eval
def _train_config(root: Path, **overrides) -> Task2TrainConfig:
    shipped = json.loads((CODE / "task2_lm_lora" / "config_lora_trainer.json").read_text())
    return parse_config(Task2TrainConfig, shipped, overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                        root=str(root))


def _infer_config(root: Path, **overrides) -> Task2InferConfig:
    shipped = json.loads((CODE / "task2_lm_lora" / "config_lora_infer.json").read_text())
    return parse_config(Task2InferConfig, shipped, overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
                        root=str(root))


@pytest.mark.parametrize("image_size", [None, 112])
def test_eval_reads_exactly_the_supervised_token(root, mapped, tmp_path, image_size):
    """SPEC 6.3: same template, prompt and answer token in LORA.py and lora_infer.py for one config."""
    _, data = mapped
    train_cfg = _train_config(root, image_size=image_size)
    trained = data.setup(train_cfg.image_size)
    write_resolved_config(tmp_path, hf_trainer.resolved_training_config(train_cfg, trained, {"output_dir": "x"}))
    saved = adapter_setup(tmp_path)
    assert saved == trained
    evaluated, notes = resolve_infer_setup(_infer_config(root), saved)
    assert evaluated == trained and notes == []
    explicit = _infer_config(root, prompt_text=DEFAULT_PROMPT, fake_token="Fake", real_token="Real",
                             image_size=image_size)
    assert resolve_infer_setup(explicit, saved) == (trained, [])
    probed, notes = resolve_infer_setup(_infer_config(root, prompt_text="Real?"), saved)
    assert probed.prompt_text == "Real?"
    assert len(notes) == 1 and "prompt_text='Real?' differs from the adapter's training value" in notes[0]

    small = [s for s in data.samples if s.image_hw in ((240, 320), (320, 240), (300, 300))][:3]
    items = [Task2ImageDataset.from_samples(small, root / "data", trained.image_size)[i] for i in range(3)]
    processor = load_processor(train_cfg.base_model_path, trained.image_size)
    train_batch = make_collator(processor, trained, train=True)(items)
    eval_batch = make_collator(load_processor(train_cfg.base_model_path, evaluated.image_size), evaluated,
                               train=False)(items)
    fake_id, real_id = answer_token_ids(processor, evaluated.fake_word, evaluated.real_word)
    torch.testing.assert_close(train_batch["pixel_values"], eval_batch["pixel_values"])
    for row, sample in enumerate(small):
        pos = int(train_batch["answer_positions"][row])
        train_ids = train_batch["input_ids"][row][: pos + 1]
        eval_ids = eval_batch["input_ids"][row][eval_batch["attention_mask"][row].bool()]
        assert torch.equal(train_ids, eval_ids)
        assert int(eval_batch["answer_positions"][row]) == eval_batch["input_ids"].shape[1] - 1
        assert int(train_batch["labels"][row, pos + 1]) == (fake_id if sample.label else real_id)


def test_label_mask_on_a_padded_native_resolution_batch(root, mapped):
    """Images of different sizes at native resolution: labels are exactly the answer word and <|im_end|>."""
    _, data = mapped
    by_size = {}
    for s in data.samples:
        by_size.setdefault(s.image_hw, s)
    picked = [by_size[hw] for hw in ((240, 320), (300, 300), (384, 512), (360, 640))]
    setup = data.setup(None)
    processor = load_processor(_train_config(root).base_model_path, None)
    dataset = Task2ImageDataset.from_samples(picked, root / "data", None)
    batch = TrainerCollator(make_collator(processor, setup, train=True))([dataset[i] for i in range(len(picked))])
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "labels"} <= set(batch)
    assert not set(batch) & {"target", "answer_positions", "position"}
    tokens_per_image = (batch["image_grid_thw"].prod(dim=1) // 4).tolist()
    assert len(set(tokens_per_image)) == 4
    assert (batch["attention_mask"] == 0).any(dim=1).sum() == 3
    tokenizer = processor.tokenizer
    # The Trainer gets the labels of the last logits_to_keep positions only (collate.answer_only_inputs).
    offset = batch["input_ids"].shape[1] - batch["logits_to_keep"]
    assert batch["labels"].shape[1] == batch["logits_to_keep"]
    for row, sample in enumerate(picked):
        kept = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        supervised = (kept + offset).tolist()
        last = int(batch["attention_mask"][row].nonzero().max())
        assert supervised == [last - 1, last]
        answer = "Fake" if sample.label else "Real"
        assert tokenizer.decode(batch["labels"][row, kept]) == answer + "<|im_end|>"
        assert torch.equal(batch["labels"][row, kept], batch["input_ids"][row, supervised])


def test_collator_wrapper_needs_training_mode(root, mapped):
    _, data = mapped
    processor = load_processor(_train_config(root).base_model_path, 112)
    with pytest.raises(ValueError, match="training collator"):
        TrainerCollator(make_collator(processor, data.setup(112), train=False))


def test_adapter_setup_requires_task2_keys(tmp_path):
    write_resolved_config(tmp_path, {"image_size": 448})
    with pytest.raises(ValueError, match=r"lacks \['prompt_text', 'fake_token', 'real_token'\]"):
        adapter_setup(tmp_path)
    assert PromptSetup(448, "q", "F", "R").answers == {0: "R", 1: "F"}
