"""Prompt, answer tokens and the collator, checked against the tiny model's real template and generate()."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from qwen_forensics.data.collate import IGNORE_INDEX, VisionLanguageCollator, generate_inputs, model_inputs
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.model.loader import load_model, load_processor
from qwen_forensics.prompts import (DEFAULT_FAKE_TOKEN, DEFAULT_PROMPT, DEFAULT_REAL_TOKEN, answer_token_id,
                                    answer_token_ids, build_messages, encode_text, prompt_text_for)

ANSWERS = {0: DEFAULT_REAL_TOKEN, 1: DEFAULT_FAKE_TOKEN}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen_prompts"), seed=0)


@pytest.fixture(scope="session")
def model(tiny_dir):
    return load_model(tiny_dir, dtype="float32")


@pytest.fixture(scope="session")
def native_processor(tiny_dir):
    return load_processor(tiny_dir, None)


def _image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _items() -> list[dict]:
    """Three images with 16, 15 and 8 image tokens, so every batch needs padding."""
    return [
        {"image": _image(112, 112, 0), "label": 1},
        {"image": _image(84, 140, 1), "label": 0},
        {"image": _image(56, 112, 2), "label": 1},
    ]


def test_prompt_follows_the_qwen_template(native_processor):
    text = prompt_text_for(native_processor, DEFAULT_PROMPT)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + DEFAULT_PROMPT + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert build_messages("q") == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]


def test_answer_tokens_are_single_and_space_sensitive(native_processor):
    tokenizer = native_processor.tokenizer
    fake, real = answer_token_ids(native_processor)
    assert (fake, real) == (answer_token_id(tokenizer, "Fake"), answer_token_id(tokenizer, "Real"))
    assert tokenizer.convert_ids_to_tokens([fake, real]) == ["Fake", "Real"]
    spaced = answer_token_id(native_processor, " Fake")
    assert spaced != fake
    assert tokenizer.decode([spaced]) == " Fake"
    assert len({answer_token_id(native_processor, w) for w in ("Real", "Fake", " Real", " Fake", "real", "fake")}) == 6


def test_multi_token_or_equal_answers_raise(native_processor):
    with pytest.raises(ValueError, match="'Forgery' is not a single token.*fake_token/real_token"):
        answer_token_id(native_processor, "Forgery")
    with pytest.raises(ValueError, match="not a single token"):
        answer_token_id(native_processor, "")
    with pytest.raises(ValueError, match="same token"):
        answer_token_ids(native_processor, "Fake", "Fake")


def test_inference_batch_is_left_padded_with_answer_at_the_end(native_processor, model):
    batch = VisionLanguageCollator(native_processor, DEFAULT_PROMPT)(_items())
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "target", "answer_positions"}
    assert "labels" not in batch
    seq_len = batch["input_ids"].shape[1]
    assert batch["target"].tolist() == [1, 0, 1]
    assert batch["answer_positions"].tolist() == [seq_len - 1] * 3
    assert batch["attention_mask"][:, -1].tolist() == [1, 1, 1]
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [16, 15, 8]
    pad_counts = (batch["attention_mask"] == 0).sum(dim=1).tolist()
    assert pad_counts == [0, 1, 8]
    assert batch["attention_mask"][2, :8].sum() == 0


def test_answer_position_logits_are_generates_first_step(native_processor, model):
    batch = VisionLanguageCollator(native_processor, DEFAULT_PROMPT)(_items())
    inputs = model_inputs(batch)
    assert "target" not in inputs and "answer_positions" not in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
    picked = logits[torch.arange(3), batch["answer_positions"]]
    out = model.generate(
        **generate_inputs(batch), max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    torch.testing.assert_close(picked, out.logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_training_labels_cover_exactly_the_answer(native_processor, tiny_dir, model, padding_side):
    collator = VisionLanguageCollator(native_processor, DEFAULT_PROMPT, answers=ANSWERS, padding_side=padding_side)
    batch = collator(_items())
    tokenizer = native_processor.tokenizer
    fake, real = answer_token_ids(native_processor)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels, mask = batch["labels"], batch["attention_mask"]
    for row, label in enumerate([1, 0, 1]):
        supervised = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        last = int(mask[row].nonzero().max())
        assert supervised == [last - 1, last]
        assert labels[row, supervised].tolist() == [fake if label else real, end]
        assert batch["answer_positions"][row] == last - 2
        assert batch["input_ids"][row, last - 2] == tokenizer.convert_tokens_to_ids("Ċ")
    if padding_side == "right":
        assert mask[:, 0].tolist() == [1, 1, 1] and mask[2, -1] == 0
    else:
        assert mask[:, -1].tolist() == [1, 1, 1] and mask[2, 0] == 0

    with torch.no_grad():
        out = model(**model_inputs(batch))
    # The model's LM loss shifts labels by one: it must equal CE at answer_positions and the next one.
    rows = torch.arange(3)
    pos = batch["answer_positions"]
    picked = torch.cat([out.logits[rows, pos], out.logits[rows, pos + 1]])
    targets = torch.cat([labels[rows, pos + 1], labels[rows, pos + 2]])
    torch.testing.assert_close(out.loss, F.cross_entropy(picked, targets), atol=1e-5, rtol=1e-5)

    # Causal attention: the answer-position logits do not see the appended answer, so they equal the
    # inference logits of the same images, whatever the padding.
    inference = VisionLanguageCollator(native_processor, DEFAULT_PROMPT)(_items())
    with torch.no_grad():
        reference = model(**model_inputs(inference)).logits[:, -1]
    torch.testing.assert_close(out.logits[rows, pos], reference, atol=1e-4, rtol=1e-4)


def test_collator_rejects_bad_input(native_processor):
    collator = VisionLanguageCollator(native_processor, DEFAULT_PROMPT, answers=ANSWERS)
    with pytest.raises(KeyError, match=r"item 1 lacks \['image'\]"):
        collator([{"image": _image(56, 56, 0), "label": 0}, {"label": 1}])
    with pytest.raises(ValueError, match="item 0 has label 2"):
        collator([{"image": _image(56, 56, 0), "label": 2}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="labels 0 .* and 1"):
        VisionLanguageCollator(native_processor, DEFAULT_PROMPT, answers={1: "Fake"})
    with pytest.raises(ValueError, match="padding_side"):
        VisionLanguageCollator(native_processor, DEFAULT_PROMPT, padding_side="middle")
    with pytest.raises(ValueError, match="empty"):
        VisionLanguageCollator(native_processor, DEFAULT_PROMPT, answers={0: "", 1: "Fake"})


def _with_merged_newlines(processor):
    """The processor with a tokenizer that also has the merge "\\n" + "\\n" -> "\\n\\n" (as Qwen's real one does),
    so text that starts with a newline after the prompt's closing newline tokenises differently."""
    data = json.loads(processor.tokenizer.backend_tokenizer.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    newline = "\u010a"  # byte-level BPE's symbol for "\n"
    vocab[newline * 2] = 1 + max(*vocab.values(), *(t["id"] for t in data["added_tokens"]))
    merges.insert(0, [newline, newline] if merges and isinstance(merges[0], list) else f"{newline} {newline}")
    merged = copy.copy(processor)
    merged.tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                               eos_token=processor.tokenizer.eos_token,
                                               pad_token=processor.tokenizer.pad_token)
    return merged


def test_an_answer_that_tokenises_differently_after_the_prompt_is_refused(native_processor):
    """The supervised answer tokens are located by tokenising the answer alone; where the prompt's last
    token and the answer's first merge (a leading newline after "assistant\\n"), that would supervise the
    wrong tokens, so the collator refuses the answer word."""
    answers = {0: "\nReal", 1: "\nFake"}
    VisionLanguageCollator(native_processor, DEFAULT_PROMPT, answers=answers)  # no "\n\n" token: nothing merges
    merged = _with_merged_newlines(native_processor)
    assert len(encode_text(merged.tokenizer, "\n\n")) == 1
    VisionLanguageCollator(merged, DEFAULT_PROMPT, answers=ANSWERS)
    with pytest.raises(ValueError, match="does not tokenise the same on its own as after the prompt"):
        VisionLanguageCollator(merged, DEFAULT_PROMPT, answers=answers)


def test_letterboxed_batch_has_no_padding(tiny_dir):
    processor = load_processor(tiny_dir, 224)
    items = [{"image": _image(224, 224, seed), "label": seed % 2} for seed in range(2)]
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT, answers=ANSWERS)(items)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 16, 16]]
    assert batch["attention_mask"].all()
    assert batch["pixel_values"].shape == (2 * 256, 3 * 2 * 14 * 14)
