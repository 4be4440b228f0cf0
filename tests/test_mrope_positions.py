"""Subtask 2 (full_model_eval.py) and Task 2 (lora_infer.py) feed the language model Qwen2.5-VL's 2-D
image positions, and a batch without ``mm_token_type_ids`` (with which transformers silently falls
back to 1-D positions) fails loudly wherever it would reach a model.

The positions the text decoder receives during the real script run are compared with positions
built here from the rule (text counts up; the image's merged h x w grid takes (s, s + row, s + col);
text resumes at s + max(h, w)) and with the model's own ``get_rope_index``, as the Task 3 test does
for soft tokens.
"""

from __future__ import annotations

import contextlib
import io
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_forensics.model import loader
from qwen_forensics.data.collate import VisionLanguageCollator, hybrid_inputs, model_inputs
from qwen_forensics.evaluation.predictions import answer_logits, score_answers
from qwen_forensics.model.loader import get_language_model, load_model, load_processor
from qwen_forensics.prompts import DEFAULT_PROMPT, answer_token_ids
from scripts import load_script

MODEL = "Qwen2.5-VL-7B-Instruct"
MERGE = 2


pytestmark = pytest.mark.usefixtures("single_thread")


def expected_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, grid_thw: torch.Tensor,
                       image_token_id: int) -> list[torch.Tensor]:
    """Per row, the [3, valid length] positions of its unpadded tokens, one image per row."""
    out = []
    for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
        ids = ids[mask.bool()]
        image = (ids == image_token_id).nonzero().flatten()
        start, count = int(image[0]), len(image)
        t, h, w = (int(v) for v in grid_thw[row])
        h, w = h // MERGE, w // MERGE
        assert t == 1 and count == h * w and torch.equal(image, torch.arange(start, start + count))
        before = torch.arange(start).expand(3, -1)
        cells = torch.arange(h * w)
        grid = torch.stack([torch.full((h * w,), start), start + cells // w, start + cells % w])
        after = (start + max(h, w) + torch.arange(len(ids) - start - count)).expand(3, -1)
        out.append(torch.cat([before, grid, after], dim=1))
    return out


def run_watching_positions(script: str, root, *sets: str) -> tuple[list[dict], torch.nn.Module]:
    """Run ``script``'s main with its ``load_model`` wrapped so that every forward records the inputs
    the model got and the position ids its text decoder got."""
    module = load_script(script)
    seen: list[dict] = []
    models = []
    load = loader.load_model

    def load_and_watch(*args, **kwargs):
        model = load(*args, **kwargs)
        models.append(model)
        model.register_forward_pre_hook(lambda m, a, kw: seen.append({k: kw.get(k) for k in (
            "input_ids", "attention_mask", "image_grid_thw", "mm_token_type_ids")}), with_kwargs=True)
        get_language_model(model).register_forward_pre_hook(
            lambda m, a, kw: seen[-1].update(position_ids=kw["position_ids"].detach().clone()), with_kwargs=True)
        return model

    argv = ["--root", str(root)]
    for value in sets:
        argv += ["--set", value]
    # The script imports load_model inside main: patched where it is defined.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            mock.patch.object(loader, "load_model", load_and_watch):
        module.main(argv)
    return seen, models[0]


def _check_2d_positions(seen: list[dict], model: torch.nn.Module, num_images: int) -> None:
    image_token_id = model.config.image_token_id
    assert sum(len(s["input_ids"]) for s in seen) == num_images
    for step in seen:
        assert step["mm_token_type_ids"] is not None
        positions = step["position_ids"]
        positions = positions[1:] if positions.shape[0] == 4 else positions  # (text, t, h, w) in some versions
        own, _ = model.model.get_rope_index(step["input_ids"], step["mm_token_type_ids"],
                                            image_grid_thw=step["image_grid_thw"],
                                            attention_mask=step["attention_mask"])
        expected = expected_positions(step["input_ids"], step["attention_mask"], step["image_grid_thw"],
                                      image_token_id)
        for row, rule in enumerate(expected):
            valid = step["attention_mask"][row].bool()
            assert torch.equal(positions[:, row][:, valid], rule)
            assert torch.equal(own[:, row][:, valid], rule)
            image = step["input_ids"][row][valid] == image_token_id
            # 2-D, not the 1-D fallback: rows and columns of the image grid differ.
            assert not torch.equal(positions[1, row][valid][image], positions[2, row][valid][image])


def test_subtask2_gives_the_lm_2d_image_positions(tiny_root, task1_ckpt, tmp_path):
    seen, model = run_watching_positions("full_model_eval", tiny_root, f"lora_checkpoint={task1_ckpt}",
                                         f"out_dir={tmp_path}", f"csv_path={tmp_path / 'm.csv'}",
                                         f"output_json={tmp_path / 'p.json'}", "num_workers=0", "batch_size=5",
                                         "torch_dtype=float32")
    _check_2d_positions(seen, model, num_images=12)


def test_task2_gives_the_lm_2d_image_positions(tiny_root, task2_adapter, tmp_path):
    seen, model = run_watching_positions("lora_infer", tiny_root, f"lora_path={task2_adapter}", f"out_dir={tmp_path}",
                                         f"csv_path={tmp_path / 'm.csv'}", f"output_json={tmp_path / 'p.json'}",
                                         "val_annotation_file=null", "num_workers=0", "batch_size=5",
                                         "torch_dtype=float32")
    _check_2d_positions(seen, model, num_images=12)


def test_a_batch_without_mm_token_type_ids_fails_loudly(tiny_root):
    model = load_model(tiny_root / MODEL, dtype="float32")
    processor = load_processor(tiny_root / MODEL, 112)
    rng = np.random.default_rng(0)
    items = [{"image": Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)), "label": i % 2,
              "position": i} for i in range(2)]
    batch = VisionLanguageCollator(processor, DEFAULT_PROMPT)(items)
    fake_id, real_id = answer_token_ids(processor)
    with torch.no_grad():
        with_key = answer_logits(model, batch, fake_id, real_id)
        # A custom collator's batch: neither mm_token_type_ids nor the collator's host position_ids.
        stripped = {k: v for k, v in batch.items() if k not in ("mm_token_type_ids", "position_ids")}
        # Why the guard exists: the raw model accepts the stripped batch and quietly answers differently.
        seen = {}
        hook = get_language_model(model).register_forward_pre_hook(
            lambda m, a, kw: seen.update(positions=kw["position_ids"]), with_kwargs=True)
        raw = model(**{k: v for k, v in stripped.items() if k not in ("target", "answer_positions", "position")},
                    use_cache=False).logits[torch.arange(2), stripped["answer_positions"]][:, [fake_id, real_id]]
        hook.remove()
    assert seen["positions"] is None or torch.equal(seen["positions"][-2], seen["positions"][-1]), "1-D fallback"
    assert not torch.allclose(raw, with_key, atol=1e-4)
    for feed in (lambda: answer_logits(model, stripped, fake_id, real_id), lambda: model_inputs(stripped),
                 lambda: hybrid_inputs(stripped),
                 lambda: score_answers(model, [stripped], None, fake_token_id=fake_id, real_token_id=real_id,
                                       num_records=2)):
        with pytest.raises(KeyError, match="has images but no 'mm_token_type_ids'.*1-D positions"):
            feed()
