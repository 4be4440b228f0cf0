"""Task 3 hybrid model on the tiny Qwen2.5-VL: identity with everything off, mRoPE positions with
soft tokens, soft-token and verdict injection, gradients into every trained part, LM loss, and the
checkpoint round trip (in a new process) with loud failures on missing tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from qwen_forensics.checkpoints.task3 import CheckpointPaths, answer_ids_for, load_hybrid_model, save_hybrid_weights
from qwen_forensics.config.loading import parse_config
from qwen_forensics.data.collate import HybridCollator, hybrid_inputs, lm_logits_to_keep
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation.predictions import eval_batch
from qwen_forensics.model.hybrid import SLOT_TOKEN, HybridPrompt, build_hybrid_model, head_statistics
from qwen_forensics.model.loader import get_language_model, load_model, load_processor
from qwen_forensics.task_configs import Task3TrainConfig
from qwen_forensics.training.losses import HybridLossWeights, answer_lm_loss, hybrid_loss
from qwen_forensics.training.optim import hybrid_optimizer
from qwen_forensics.training.recompute import enable_gradient_checkpointing
from scripts import load_script

IMAGE_SIZE = 112
ANSWERS = {0: "Real", 1: "Fake"}
ALL_OFF = {"visual": {"enabled": False}, "merge": {"enabled": False}, "lm": {"enabled": False}}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen_task3"), seed=0)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir, IMAGE_SIZE)


def _cfg(**overrides) -> Task3TrainConfig:
    """LoRA on every component (as the shipped config) unless ``lora`` is overridden."""
    return parse_config(Task3TrainConfig, {"image_size": IMAGE_SIZE, "fuse_dim": 32,
                                           "lora": {"merge": {"enabled": True}}, **overrides})


def _build(tiny_dir, processor, **overrides):
    base = load_model(tiny_dir, dtype="float32")
    model, spec = build_hybrid_model(base, processor, _cfg(**overrides))
    return base, model.eval(), spec


def _items(n: int = 3) -> list[dict]:
    """Letterboxed-size images with a square in the corner for fakes (mask marks it)."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        mask = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
        if label:
            pixels[:40, :40] = (255, 0, 255)
            mask[:40, :40] = 1.0
        items.append({"image": Image.fromarray(pixels), "label": label, "mask": mask, "position": i})
    return items


def _capture_lm_inputs(base):
    """Record the position ids and the embeddings the text decoder's first layer receives."""
    seen = {}

    def positions(module, args, kwargs):
        seen["position_ids"] = kwargs["position_ids"].detach().clone()

    def embeddings(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen["embeds"] = hidden.detach().clone()

    lm = get_language_model(base)
    handles = [lm.register_forward_pre_hook(positions, with_kwargs=True),
               lm.layers[0].register_forward_pre_hook(embeddings, with_kwargs=True)]
    return seen, handles


def test_everything_off_gives_the_base_models_logits(tiny_dir, processor):
    base, model, spec = _build(tiny_dir, processor, fusion_tokens=0, head_verdict_prompt=False, lora=ALL_OFF)
    assert model.fusion is None and not any(spec.lora_targets.values())
    batch = HybridCollator(processor, model.prompt)(_items())
    with torch.no_grad():
        hybrid = model(**hybrid_inputs(batch))
        reference = base(**hybrid_inputs(batch)).logits
    assert torch.equal(hybrid["logits"], reference)
    assert hybrid["cls_logit"].shape == (3,) and hybrid["heatmap_logit"].shape == (3, 8, 8)


def test_soft_tokens_keep_the_models_2d_image_positions(tiny_dir, processor):
    base, model, _ = _build(tiny_dir, processor, fusion_tokens=3, head_verdict_prompt=True)
    batch = HybridCollator(processor, model.prompt)(_items())
    seen, handles = _capture_lm_inputs(base)
    with torch.no_grad():
        out = model(**hybrid_inputs(batch))
        hybrid_positions, embeds = seen["position_ids"], seen["embeds"]
        # The same prompt with the slots as an ordinary word, through the plain model.
        plain = dict(hybrid_inputs(batch))
        word = processor.tokenizer("Real", add_special_tokens=False)["input_ids"]
        assert len(word) == 1
        slots = plain["input_ids"] == model.prompt.slot_token_id
        plain["input_ids"] = plain["input_ids"].masked_fill(slots, word[0])
        base(**plain)
        plain_positions = seen["position_ids"]
    for handle in handles:
        handle.remove()

    valid = batch["attention_mask"].bool()
    assert torch.equal(hybrid_positions[:, valid], plain_positions[:, valid])
    # Pinned by hand: text counts up, the 4x4 image grid takes (s, s + row, s + col), text resumes
    # at s + 4 with <|vision_end|>, then come the 3 slots.
    image = batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row in range(3):
        ids, pos = batch["input_ids"][row][valid[row]], hybrid_positions[:, row][:, valid[row]]
        first = int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).nonzero()[0])
        assert torch.equal(pos[:, :first], torch.arange(first).expand(3, -1))
        grid = torch.arange(16)
        expected_image = torch.stack([torch.full((16,), first), first + grid // 4, first + grid % 4])
        assert torch.equal(pos[:, first:first + 16], expected_image)
        after = pos[:, first + 16:]
        assert torch.equal(after, (first + 4 + torch.arange(after.shape[1])).expand(3, -1))
        slot_at = (ids == model.prompt.slot_token_id).nonzero().squeeze(1)
        assert slot_at.tolist() == [first + 17, first + 18, first + 19]
    # Not the 1-D fallback (trap 6.2): the image rows differ from plain sequence positions.
    assert not torch.equal(hybrid_positions[1][image], hybrid_positions[2][image])

    # The LM received the fusion projector's tokens in the slots and the head's verdict word.
    soft = model.fusion(out["pooled"], head_statistics(out["cls_logit"], out["heatmap_logit"]))
    slots = batch["input_ids"] == model.prompt.slot_token_id
    assert torch.allclose(embeds[slots], soft.reshape(-1, soft.shape[-1]), atol=1e-6)
    ends = (batch["input_ids"] == base.config.vision_end_token_id).int().argmax(1)
    verdict_at = ends + model.prompt.verdict_offset
    fake_id, real_id = model.prompt.verdict_ids
    words = torch.where(out["cls_logit"] >= 0, fake_id, real_id)
    table = base.get_input_embeddings().weight
    assert torch.equal(embeds[torch.arange(3), verdict_at], table[words])


def test_forcing_the_head_verdict_changes_the_word(tiny_dir, processor):
    base, model, _ = _build(tiny_dir, processor, fusion_tokens=0, head_verdict_prompt=True, lora=ALL_OFF)
    batch = HybridCollator(processor, model.prompt)(_items(2))
    verdicts = {}
    for name, bias in (("fake", 50.0), ("real", -50.0)):
        model.heads.classifier[-1].bias.data.fill_(bias)
        seen, handles = _capture_lm_inputs(base)
        with torch.no_grad():
            model(**hybrid_inputs(batch))
        for handle in handles:
            handle.remove()
        at = (batch["input_ids"] == base.config.vision_end_token_id).int().argmax(1) + model.prompt.verdict_offset
        verdicts[name] = seen["embeds"][torch.arange(2), at]
    table = base.get_input_embeddings().weight
    fake_id, real_id = model.prompt.verdict_ids
    assert torch.equal(verdicts["fake"], table[[fake_id] * 2])
    assert torch.equal(verdicts["real"], table[[real_id] * 2])


def test_verdict_words_must_be_single_tokens(processor):
    with pytest.raises(ValueError, match="one token"):
        HybridPrompt.build(processor, "Is it fake?", 2, fake_word="Fake news", real_word="Real", head_verdict=True)
    with pytest.raises(ValueError, match="must not contain"):
        HybridPrompt.build(processor, SLOT_TOKEN + "?", 2, fake_word="Fake", real_word="Real", head_verdict=False)


def test_lm_loss_on_kept_logits_equals_the_models_own_loss(tiny_dir, processor):
    base, model, _ = _build(tiny_dir, processor, fusion_tokens=0, head_verdict_prompt=False, lora=ALL_OFF)
    batch = HybridCollator(processor, model.prompt, ANSWERS)(_items())
    keep = lm_logits_to_keep(batch["labels"])
    assert keep == 3  # one answer token + <|im_end|>, left padded
    with torch.no_grad():
        kept = model(**hybrid_inputs(batch), logits_to_keep=keep)["logits"]
        reference = base(**hybrid_inputs(batch), labels=batch["labels"]).loss
    assert torch.allclose(answer_lm_loss(kept, batch["labels"]), reference, atol=1e-6)
    with pytest.raises(ValueError, match="last 2 positions cannot predict"):
        answer_lm_loss(kept[:, 1:], batch["labels"])


def test_one_step_reaches_every_trained_part(tiny_dir, processor):
    base, model, spec = _build(tiny_dir, processor, fusion_tokens=2, head_verdict_prompt=True)
    enable_gradient_checkpointing(base)
    model.train()
    batch = HybridCollator(processor, model.prompt, ANSWERS)(_items(2))
    terms = hybrid_loss(model(**hybrid_inputs(batch), logits_to_keep=batch["logits_to_keep"]), batch,
                        HybridLossWeights.from_config(_cfg()))
    terms["total"].backward()
    assert {k: len(v) for k, v in spec.lora_targets.items()} == {"visual": 20, "merger": 2, "vision_extra": 0, "lm": 14}
    for component, names in spec.lora_targets.items():
        for name in names:
            grad = base.get_submodule(name).lora_B["default"].weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"{component} LoRA {name} got no gradient"
    for part in (model.heads, model.fusion):
        for name, param in part.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    frozen = [n for n, p in base.named_parameters() if "lora_" not in n and p.grad is not None]
    assert frozen == []


def _randomise(model) -> None:
    """Make every trained tensor matter (LoRA B starts at zero) so a lost tensor changes outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad or "lora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


CHILD = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    from qwen_forensics.model.loader import load_model, load_processor
    from qwen_forensics.checkpoints.task3 import CheckpointPaths, load_hybrid_model, read_hybrid_spec
    tiny, ckpt, batch_file, out_file = sys.argv[1:]
    paths = CheckpointPaths.folder(ckpt)
    processor = load_processor(tiny, read_hybrid_spec(paths.fusion_file).image_size)
    model, spec = load_hybrid_model(load_model(tiny, dtype="float32"), processor, paths)
    batch = load_file(batch_file)
    with torch.no_grad():
        out = model.eval()(**batch)
    save_file({k: v.contiguous() for k, v in out.items()}, out_file)
""")


def test_checkpoint_round_trip_in_a_new_process(tiny_dir, processor, tmp_path):
    _, model, spec = _build(tiny_dir, processor, fusion_tokens=2, head_verdict_prompt=True)
    _randomise(model)
    ckpt = tmp_path / "ckpt"
    save_hybrid_weights(model, spec, CheckpointPaths.folder(ckpt))
    assert sorted(p.name for p in ckpt.iterdir()) == ["adapter", "fusion.safetensors", "heads.safetensors"]
    batch = hybrid_inputs(HybridCollator(processor, model.prompt)(_items()))
    save_file({k: v.contiguous() for k, v in batch.items()}, tmp_path / "batch.safetensors")
    with torch.no_grad():
        expected = model(**batch)
    subprocess.run([sys.executable, "-c", CHILD, str(tiny_dir), str(ckpt), str(tmp_path / "batch.safetensors"),
                    str(tmp_path / "out.safetensors")], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    got = load_file(tmp_path / "out.safetensors")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-5), key
    with safe_open(str(ckpt / "fusion.safetensors"), framework="pt") as f:
        saved_spec = json.loads(f.metadata()["hybrid_spec"])
    assert saved_spec["fusion_tokens"] == 2 and saved_spec["image_size"] == IMAGE_SIZE


@pytest.mark.parametrize("part", ["heads.safetensors", "fusion.safetensors", "adapter/adapter_model.safetensors"])
def test_a_missing_tensor_fails_loudly(tiny_dir, processor, tmp_path, part):
    _, model, spec = _build(tiny_dir, processor, fusion_tokens=2, head_verdict_prompt=False)
    ckpt = tmp_path / "ckpt"
    save_hybrid_weights(model, spec, CheckpointPaths.folder(ckpt))
    path = ckpt / part
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match="missing from the file") as err:
        load_hybrid_model(load_model(tiny_dir, dtype="float32"), processor, CheckpointPaths.folder(ckpt))
    assert str(path) in str(err.value)


def test_train_step_and_eval_batch_as_the_gpu_benchmark_calls_them(tiny_dir, processor):
    """benchmark_gpu.py times exactly these two on fixed batches: its train_step (the loss
    hybrid_train.py minimises, clipped, one AdamW step) and eval_batch (what hybrid_eval.py scores)."""
    base, model, spec = _build(tiny_dir, processor, lr_head=0.01, lr_fusion=0.01, warmup_ratio=0.0)
    cfg = _cfg(lr_head=0.01, lr_fusion=0.01, warmup_ratio=0.0)
    optimizer, _ = hybrid_optimizer(model, cfg, total_steps=1_000)
    items = _items(2)
    train = HybridCollator(processor, model.prompt, ANSWERS)(items)
    evaluation = HybridCollator(processor, model.prompt)(items)
    assert "mask" not in evaluation and "labels" in train
    train_step = load_script("benchmark_gpu").train_step
    losses = [float(train_step(model, train, optimizer, HybridLossWeights.from_config(cfg), amp_dtype="fp32")["total"])
              for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    out = eval_batch(model, evaluation, answer_ids_for(processor, spec), amp_dtype="fp32")
    assert out["p_fake_lm"].shape == out["p_fake_head"].shape == (2,) and out["heatmap"].shape == (2, 8, 8)
    assert bool(((out["p_fake_lm"] > 0) & (out["p_fake_lm"] < 1)).all())


def test_the_vision_tower_runs_once_per_forward(tiny_dir, processor):
    base, model, spec = _build(tiny_dir, processor, fusion_tokens=2, head_verdict_prompt=True)
    calls = []
    handle = base.model.visual.register_forward_hook(lambda *args: calls.append(1))
    items = _items(2)
    eval_batch(model, HybridCollator(processor, model.prompt)(items), answer_ids_for(processor, spec), amp_dtype="fp32")
    assert len(calls) == 1
    batch = HybridCollator(processor, model.prompt, ANSWERS)(items)
    out = model.train()(**hybrid_inputs(batch), logits_to_keep=batch["logits_to_keep"])
    hybrid_loss(out, batch, HybridLossWeights.from_config(_cfg()))["total"].backward()
    handle.remove()
    assert len(calls) == 2
