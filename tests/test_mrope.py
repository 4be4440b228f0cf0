"""The collators compute Qwen2.5-VL's mRoPE ``position_ids`` on the host (``model.mrope``), so the model's
forward skips its row-by-row ``get_rope_index`` on the device. Checked on the tiny model, with left
(evaluation) and right (training) padding, rows of different lengths (mixed patch grids, two prompts):
the collator's positions are exactly the model's own, the logits are unchanged, transformers does use
the passed positions (wrong ones change the logits), and every path to the model passes them through
(Trainer, Task 3 hybrid) except ``generate``, which gets none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_forensics.config.loading import parse_config
from qwen_forensics.data.collate import (HybridCollator, TrainerCollator, VisionLanguageCollator, generate_inputs,
                                         hybrid_inputs, lm_logits_to_keep, model_inputs)
from qwen_forensics.model.hybrid import build_hybrid_model
from qwen_forensics.model.loader import get_language_model, load_model, load_processor
from qwen_forensics.model.mrope import host_position_ids
from qwen_forensics.prompts import DEFAULT_PROMPT
from qwen_forensics.task_configs import Task3TrainConfig

IMAGE_SIZE = 112
ANSWERS = {0: "Real", 1: "Fake"}
PROMPTS = (DEFAULT_PROMPT, "Look closely at the faces and the edges. Was this picture edited? Reply Real or Fake.")
# Letterboxed to 112**2 pixels: square, portrait and landscape give the grids 8x8, 10x6 (or so) and 6x10.
SIZES = [(112, 112), (150, 90), (90, 160), (112, 112), (60, 200)]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir, IMAGE_SIZE)


def _items(sizes=SIZES) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "label": i % 2,
             "position": i} for i, (h, w) in enumerate(sizes)]


def _decoder_positions(model, call) -> torch.Tensor:
    """The position ids the text decoder receives during ``call()``."""
    seen = {}
    handle = get_language_model(model).register_forward_pre_hook(
        lambda m, a, kw: seen.update(positions=kw["position_ids"].detach().clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            out = call()
    finally:
        handle.remove()
    return seen["positions"], out


def _without_positions(inputs):
    return {k: v for k, v in inputs.items() if k != "position_ids"}


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("padding_side,answers", [("left", None), ("right", ANSWERS), ("left", ANSWERS)])
def test_collator_positions_are_the_models_own(model, processor, prompt, padding_side, answers):
    batch = VisionLanguageCollator(processor, prompt, answers=answers, padding_side=padding_side)(_items())
    mask = batch["attention_mask"]
    assert len({tuple(g) for g in batch["image_grid_thw"].tolist()}) >= 3, "mixed patch grids"
    assert (mask == 0).any(), "rows of different lengths, so padding"
    edge = 0 if padding_side == "left" else -1
    assert (mask[:, edge] == 0).any() and (mask[:, -1 - edge] == 1).all()
    host = batch["position_ids"]
    assert host.dtype == torch.long and host.shape == (3, *batch["input_ids"].shape) and host.device.type == "cpu"

    inputs = model_inputs(batch)
    own, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                        image_grid_thw=batch["image_grid_thw"], attention_mask=mask)
    computed, reference = _decoder_positions(model, lambda: model(**_without_positions(inputs), use_cache=False))
    passed, out = _decoder_positions(model, lambda: model(**inputs, use_cache=False))
    computed = computed[1:] if computed.shape[0] == 4 else computed
    assert torch.equal(host, own) and torch.equal(host, computed)
    assert passed is not None and torch.equal(passed, host), "the decoder gets the collator's tensor as it is"
    # 2-D image positions (rows and columns differ), not the 1-D fallback.
    image = batch["input_ids"] == model.config.image_token_id
    assert not torch.equal(host[1][image], host[2][image])
    assert torch.equal(out.logits, reference.logits)
    if answers is not None:
        assert torch.equal(out.loss, reference.loss)


def test_transformers_uses_the_passed_positions(model, processor):
    """Were the passed position_ids ignored (or recomputed), wrong ones would not change the logits."""
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT)(_items())
    inputs = model_inputs(batch)
    with torch.no_grad():
        right = model(**inputs, use_cache=False).logits
        swapped = model(**dict(inputs, position_ids=inputs["position_ids"][[0, 2, 1]]), use_cache=False).logits
        flat = inputs["position_ids"][:1].expand(3, -1, -1)  # 1-D: every component the temporal one
        one_d = model(**dict(inputs, position_ids=flat), use_cache=False).logits
    valid = batch["attention_mask"].bool()
    for wrong in (swapped, one_d):
        assert not torch.allclose(wrong[valid], right[valid], atol=1e-4)


def test_the_forward_skips_its_own_computation(model, processor, monkeypatch):
    """The point of it all: given position_ids, the forward never calls get_rope_index (its device syncs)."""
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT)(_items())
    calls = []
    own = type(model.model).get_rope_index
    monkeypatch.setattr(type(model.model), "get_rope_index", lambda *a, **kw: calls.append(1) or own(*a, **kw))
    with torch.no_grad():
        model(**model_inputs(batch), use_cache=False)
        assert calls == []
        model(**_without_positions(model_inputs(batch)), use_cache=False)
    assert calls == [1]


def test_trainer_batches_carry_the_positions(model, processor):
    """TrainerCollator (Task 2): answer_only_inputs cuts labels and sets logits_to_keep, positions stay whole."""
    items = _items()
    collator = VisionLanguageCollator(processor, DEFAULT_PROMPT, answers=ANSWERS, padding_side="right")
    full = model_inputs(collator(items))
    cut = TrainerCollator(VisionLanguageCollator(processor, DEFAULT_PROMPT, answers=ANSWERS,
                                                 padding_side="right"))(items)
    assert torch.equal(cut["position_ids"], full["position_ids"])
    assert cut["logits_to_keep"] == lm_logits_to_keep(full["labels"])
    with torch.no_grad():
        kept = model(**cut, use_cache=False)
        reference = model(**_without_positions(cut), use_cache=False)
    assert torch.equal(kept.logits, reference.logits) and torch.equal(kept.loss, reference.loss)
    assert kept.logits.shape[1] == cut["logits_to_keep"]


@pytest.mark.parametrize("answers", [None, ANSWERS])
def test_hybrid_model_gets_the_collators_positions(tiny_model_dir, processor, answers):
    """Task 3: HybridCollator's positions reach the base model through HybridModel.forward's kwargs."""
    base = load_model(tiny_model_dir, dtype="float32")
    cfg = parse_config(Task3TrainConfig, {"image_size": IMAGE_SIZE, "fuse_dim": 32, "fusion_tokens": 3,
                                          "head_verdict_prompt": True})
    hybrid, _ = build_hybrid_model(base, processor, cfg, say=lambda note: None)
    hybrid.eval()
    # The heads need one patch grid: letterboxed squares (so no padding here).
    items = [dict(item, mask=torch.zeros(IMAGE_SIZE, IMAGE_SIZE)) for item in _items([(112, 112)] * 3)]
    batch = HybridCollator(processor, hybrid.prompt, answers)(items)
    inputs = hybrid_inputs(batch)
    assert "position_ids" in inputs
    keep = batch["logits_to_keep"] if answers else 1
    passed, out = _decoder_positions(base, lambda: hybrid(**inputs, logits_to_keep=keep))
    computed, reference = _decoder_positions(base, lambda: hybrid(**_without_positions(inputs), logits_to_keep=keep))
    assert torch.equal(passed, batch["position_ids"]) and torch.equal(computed, batch["position_ids"])
    assert torch.equal(out["logits"], reference["logits"])
    assert torch.equal(out["cls_logit"], reference["cls_logit"])


def test_generate_gets_no_positions(model, processor):
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT)(_items())
    inputs = generate_inputs(batch)
    assert "position_ids" not in inputs and "mm_token_type_ids" in inputs
    assert set(inputs) == set(model_inputs(batch)) - {"position_ids"}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        first = model(**model_inputs(batch), use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[0], first, atol=1e-5, rtol=1e-5)


def test_host_positions_refuse_device_tensors_and_videos(processor):
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT)(_items()[:2])
    with pytest.raises(ValueError, match="not on the CPU"):
        host_position_ids({**batch, "input_ids": batch["input_ids"].to("meta")}, 2)
    with pytest.raises(ValueError, match="image batches only"):
        host_position_ids({**batch, "video_grid_thw": batch["image_grid_thw"]}, 2)
    with pytest.raises(KeyError, match="mm_token_type_ids"):
        host_position_ids({k: v for k, v in batch.items() if k != "mm_token_type_ids"}, 2)
