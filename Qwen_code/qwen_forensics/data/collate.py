"""Batches of (image, label) items turned into Qwen2.5-VL inputs through the model's own processor.

Every row is the chat-templated prompt (``prompts.prompt_text_for``) with one image. Two modes:

- inference (``answers=None``): the prompt ends with the assistant header; the logits at
  ``answer_positions`` predict the answer token. With the default left padding that is the last
  position of every row, the same position ``generate`` reads first.
- LM training (``answers={0: "Real", 1: "Fake"}``): each row's answer word, chosen by its label, and the
  end-of-turn token (the tokenizer's eos, "<|im_end|>" for Qwen) are appended. ``labels`` is -100
  everywhere except those tokens. The end-of-turn token is supervised so that a trained model stops
  after the word when it is asked through ``generate``; ``answer_positions`` still points at the
  position whose logits predict the first answer token (the one eval reads).

Extra keys next to the processor's output: ``target`` (image-level 0/1 labels, int64; absent when
inference items carry no label, e.g. ``predict.py``'s unlabelled images),
``answer_positions`` (int64 [B]), ``position`` (int64 [B], each item's index in its dataset, when the
items carry one: distributed evaluation orders gathered outputs by it), ``position_ids`` (the mRoPE
positions [3, B, L], computed here on the CPU by ``model.mrope.host_position_ids``, so the model's
forward skips its own row-by-row computation and its host syncs) and, in training mode, ``labels``.
``model_inputs`` strips the bookkeeping keys before calling the model; ``generate_inputs`` also strips
``position_ids``, which ``generate`` must build itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from qwen_forensics.model.mrope import POSITION_KEY, host_position_ids
from qwen_forensics.prompts import PromptSetup, encode_text, prompt_text_for

if TYPE_CHECKING:
    from qwen_forensics.model.hybrid import HybridPrompt

IGNORE_INDEX = -100
EXTRA_KEYS = ("target", "answer_positions", "position")
MROPE_KEY = "mm_token_type_ids"
GRID_HOST_KEY = "image_grid_thw_host"
# Evaluation items with heatmaps carry the ground truth for scoring in the loop (``evaluation.scoring``):
# the binarised mask at the original resolution (bool [H, W], None for a real) and the image's size; beside it
# the same mask binarised as IMDLBenCo does (``masks.imdlbenco_binarize``), for its convention's columns.
TRUTH_KEY = "truth"
IMDLBENCO_TRUTH_KEY = "truth_imdlbenco"
SIZE_KEY = "original_hw"
# predict.py's items carry a small copy of the original image (uint8 [h, w, 3]) for the overlay picture.
THUMB_KEY = "thumbnail"


def require_mrope_inputs(batch: Mapping[str, torch.Tensor]) -> None:
    """Stop a batch with images but without ``mm_token_type_ids`` before it reaches the model.

    Qwen2.5-VL gives image tokens 2-D (row, column) rotary positions only when the batch marks
    which tokens are image tokens; without ``mm_token_type_ids`` transformers silently falls back
    to 1-D positions (SPEC 6.2) and every answer is scored on inputs unlike the ones it was
    trained on, with no error anywhere.
    """
    if "pixel_values" in batch and "input_ids" in batch and MROPE_KEY not in batch:
        raise KeyError(f"the batch has images but no {MROPE_KEY!r}: without it transformers gives the image tokens "
                       "1-D positions instead of Qwen2.5-VL's 2-D ones and the scores are silently wrong. Build "
                       "batches with the model's own processor (VisionLanguageCollator / HybridCollator keep every key "
                       "it returns); a custom collator must pass mm_token_type_ids through")


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the collator's bookkeeping keys, ready for ``model(**inputs)``; a batch with
    images must carry ``mm_token_type_ids`` (:func:`require_mrope_inputs`)."""
    require_mrope_inputs(batch)
    return {key: value for key, value in batch.items() if key not in EXTRA_KEYS}


def generate_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`model_inputs` for ``model.generate``: without the collator's ``position_ids``. ``generate``
    builds its own ([4, B, L], text positions first) and stores the ``rope_deltas`` its decoding steps
    add to the new tokens' positions; given positions, it would skip both."""
    return {key: value for key, value in model_inputs(batch).items() if key != POSITION_KEY}


def lm_logits_to_keep(labels: torch.Tensor) -> int:
    """How many final positions' logits the LM loss needs: from the one before the first
    supervised token to the end (3 for a one-token answer + end of turn with left padding)."""
    supervised = (labels != IGNORE_INDEX).any(0).nonzero()
    if supervised.numel() == 0:
        raise ValueError("the batch has no supervised answer tokens; build it with answers (training mode)")
    first = int(supervised[0])
    if first == 0:
        raise ValueError("a supervised token at position 0 has no preceding position to predict it")
    return labels.shape[1] - first + 1


def answer_only_inputs(inputs: Mapping[str, torch.Tensor]) -> dict:
    """Model inputs of an LM-training batch whose loss needs the answer positions' logits only.

    transformers projects every position onto the 152k-word vocabulary when ``labels`` are given
    (for a 300-token prompt about 6% of the 7B model's training FLOPs, and a [B, L, V] fp32 tensor),
    although only the answer word and end of turn are supervised. With ``logits_to_keep`` = the last
    k positions and ``labels`` cut to the same k positions, the model's own shifted cross entropy
    sees exactly the supervised tokens it saw before: the same loss, its ``num_items_in_batch``
    handling under gradient accumulation included.
    """
    labels = inputs["labels"]
    keep = lm_logits_to_keep(labels)
    return {**inputs, "labels": labels[:, -keep:], "logits_to_keep": keep}


class VisionLanguageCollator:
    """Collate ``[{"image": PIL.Image, "label": 0|1, ...}, ...]`` into model inputs (``label`` optional
    in inference mode).

    Images must already be letterboxed to the size the processor was loaded for
    (``loader.load_processor(model_path, image_size)``); the collator does not resize.
    """

    def __init__(
        self,
        processor,
        prompt_text: str,
        *,
        answers: Mapping[int, str] | None = None,
        padding_side: str = "left",
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if answers is not None and set(answers) != {0, 1}:
            raise ValueError(f"answers must map both labels 0 (real) and 1 (fake) to a word, got keys {sorted(answers)}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.merge_size = int(processor.image_processor.merge_size)  # for the host mRoPE positions
        self.prompt = prompt_text_for(processor, prompt_text)
        self.padding_side = padding_side
        self.answers = dict(answers) if answers is not None else None
        self._suffixes: dict[int, str] = {}
        self._answer_lengths: dict[int, int] = {}
        if self.answers is not None:
            end_of_turn = self.tokenizer.eos_token
            if not end_of_turn:
                raise ValueError("the tokenizer has no eos_token to close the assistant turn; check tokenizer_config.json")
            self._suffixes = {label: word + end_of_turn for label, word in self.answers.items()}
            self._answer_lengths = {label: self._suffix_length(suffix) for label, suffix in self._suffixes.items()}

    def _suffix_length(self, suffix: str) -> int:
        """Token count of the answer; tokenising it alone must give the same tokens as after the prompt."""
        prompt_ids, suffix_ids = encode_text(self.tokenizer, self.prompt), encode_text(self.tokenizer, suffix)
        if encode_text(self.tokenizer, self.prompt + suffix) != prompt_ids + suffix_ids:
            raise ValueError(
                f"answer text {suffix!r} does not tokenise the same on its own as after the prompt, so the "
                "supervised tokens cannot be located; choose an answer word without leading whitespace"
            )
        if len(suffix_ids) < 2:
            raise ValueError(f"answer text {suffix!r} is empty; give a non-empty answer word for each label")
        return len(suffix_ids)

    def __call__(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        # Training needs every label (it picks the answer); inference may score unlabelled images.
        required = ("image", "label") if self.answers is not None else ("image",)
        for index, item in enumerate(items):
            missing = [key for key in required if key not in item]
            if missing:
                raise KeyError(f"batch item {index} lacks {missing}; items need 'image' (PIL image) and, for "
                               "training, 'label' (0/1)")
            if "label" in item and int(item["label"]) not in (0, 1):
                raise ValueError(f"batch item {index} has label {item['label']!r}; labels must be 0 (real) or 1 (fake)")
        for key in ("position", "label"):
            carried = [key in item for item in items]
            if any(carried) and not all(carried):
                raise KeyError(f"batch items {[i for i, has in enumerate(carried) if not has]} lack {key!r} while "
                               "others carry it; a dataset gives every item one or none")
        with_position = all("position" in item for item in items)
        labels = [int(item["label"]) for item in items] if "label" in items[0] else None
        if self.answers is None:
            texts = [self.prompt] * len(items)
            answer_lengths = [0] * len(items)
        else:
            texts = [self.prompt + self._suffixes[label] for label in labels]
            answer_lengths = [self._answer_lengths[label] for label in labels]
        batch = dict(
            self.processor(
                text=texts,
                images=[item["image"] for item in items],
                padding=True,
                padding_side=self.padding_side,
                return_tensors="pt",
            )
        )
        if MROPE_KEY in batch and "image_grid_thw" in batch:
            # Without mm_token_type_ids there are no 2-D positions to make: require_mrope_inputs stops the batch.
            batch[POSITION_KEY] = host_position_ids(batch, self.merge_size)
        attention_mask = batch["attention_mask"]
        positions = torch.arange(attention_mask.shape[1])
        last_token = (positions * attention_mask).amax(dim=1)
        lengths = torch.tensor(answer_lengths)
        # Causal LM: the logits at position p predict token p + 1, so the first answer token (at
        # last_token - length + 1) is predicted at last_token - length; with no answer, at last_token.
        batch["answer_positions"] = last_token - lengths
        if labels is not None:
            batch["target"] = torch.tensor(labels, dtype=torch.long)
        if with_position:
            batch["position"] = torch.tensor([int(item["position"]) for item in items], dtype=torch.long)
        if self.answers is not None:
            lm_labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
            for row, (end, length) in enumerate(zip(last_token.tolist(), answer_lengths)):
                lm_labels[row, end - length + 1 : end + 1] = batch["input_ids"][row, end - length + 1 : end + 1]
            batch["labels"] = lm_labels
        return batch


class ImageBatchCollator:
    """Collate ForgeryDataset items for the vision tower alone (Task 1): no prompt, no LM inputs.

    Returns ``pixel_values`` and ``image_grid_thw`` from the model's image processor, the same grid
    as Python ints under ``GRID_HOST_KEY`` (accelerate moves only tensors, so it stays on the host:
    see :func:`vision_grid`), the stacked training ``mask`` [B, S, S], image-level ``labels`` [B] and
    ``position`` [B] (index into the dataset, used to order outputs gathered across processes).
    Items without ``mask`` and ``label`` (unlabelled images for prediction) give a batch without
    those two keys.
    """

    def __init__(self, processor) -> None:
        self.image_processor = getattr(processor, "image_processor", processor)

    def __call__(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        processed = dict(self.image_processor(images=[item["image"] for item in items], return_tensors="pt"))
        batch = {
            "pixel_values": processed["pixel_values"],
            "image_grid_thw": processed["image_grid_thw"],
            GRID_HOST_KEY: tuple(tuple(row) for row in processed["image_grid_thw"].tolist()),
            "position": torch.tensor([int(item["position"]) for item in items], dtype=torch.long),
        }
        labelled = ["mask" in item and "label" in item for item in items]
        if any(labelled) and not all(labelled):
            raise KeyError(f"batch items {[i for i, has in enumerate(labelled) if not has]} lack 'mask'/'label' "
                           "while others carry them; training items need both")
        if all(labelled):
            batch["mask"] = torch.stack([item["mask"] for item in items])
            batch["labels"] = torch.tensor([int(item["label"]) for item in items], dtype=torch.float32)
        batch.update(truth_of(items))
        return batch


def vision_grid(batch: Mapping) -> torch.Tensor | tuple:
    """The patch grid to hand the vision tower: the host copy when the collator recorded one.

    The tower's index tensors are cached per grid (``window_attention``), and looking the grid up
    from a tensor already on the GPU reads it back, a sync that makes every step wait for the
    previous one to finish on the device."""
    return batch.get(GRID_HOST_KEY, batch["image_grid_thw"])


def make_collator(processor, setup: PromptSetup, *, train: bool) -> VisionLanguageCollator:
    """The one collator construction of Task 2: training appends and supervises the answer (right
    padding), evaluation stops at the assistant header (left padding, the answer is read last)."""
    if train:
        return VisionLanguageCollator(processor, setup.prompt_text, answers=setup.answers, padding_side="right")
    return VisionLanguageCollator(processor, setup.prompt_text)


class TrainerCollator:
    """Wraps the LM collator for ``transformers.Trainer``: the model gets only what its forward takes,
    and projects only the answer positions onto the vocabulary (``collate.answer_only_inputs``)."""

    def __init__(self, collator: VisionLanguageCollator):
        if collator.answers is None:
            raise ValueError("Trainer needs the training collator (answers given), which builds labels")
        self.collator = collator

    def __call__(self, items):
        return answer_only_inputs(model_inputs(self.collator(items)))


# Batch keys that are bookkeeping or targets, not arguments of the Qwen2.5-VL forward.
NON_MODEL_KEYS = ("target", "answer_positions", "labels", "mask", "position", "logits_to_keep", GRID_HOST_KEY, TRUTH_KEY,
                  IMDLBENCO_TRUTH_KEY, SIZE_KEY, THUMB_KEY)


class HybridCollator:
    """ForgeryDataset items -> ``VisionLanguageCollator`` batches of the hybrid prompt (left padded).

    With ``answers`` (training) the batch also holds LM ``labels``, the items' training ``mask``
    [B, S, S] for the head losses and ``logits_to_keep`` (:func:`lm_logits_to_keep`, an int computed
    here on the host, so the training step does not wait on the GPU for it); without (evaluation)
    it is exactly what ``evaluation.score_answers`` scores.
    """

    def __init__(self, processor, prompt: HybridPrompt, answers: Mapping[int, str] | None = None):
        self.prompt = prompt
        self.lm = VisionLanguageCollator(processor, prompt.text, answers=answers, padding_side="left")

    def __call__(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        batch = self.lm(items)
        if self.lm.answers is not None:
            batch["mask"] = torch.stack([item["mask"] for item in items])
            batch["logits_to_keep"] = lm_logits_to_keep(batch["labels"])
        batch.update(truth_of(items))
        return batch


def truth_of(items: Sequence[Mapping]) -> dict:
    """What items carry for the pictures and scores made in the loop, batched: the ground truth
    (:data:`TRUTH_KEY`, :data:`IMDLBENCO_TRUTH_KEY`), the original size (:data:`SIZE_KEY`) and the overlay
    thumbnail (:data:`THUMB_KEY`)."""
    batch = {}
    for key in (TRUTH_KEY, IMDLBENCO_TRUTH_KEY):
        if key in items[0]:
            batch[key] = [None if item[key] is None else torch.from_numpy(item[key]) for item in items]
    if THUMB_KEY in items[0]:
        batch[THUMB_KEY] = [torch.from_numpy(item[THUMB_KEY]) for item in items]
    if SIZE_KEY in items[0]:
        batch[SIZE_KEY] = torch.tensor([item[SIZE_KEY] for item in items], dtype=torch.long)
    return batch


def hybrid_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's arguments for ``HybridModel.forward`` (with ``mm_token_type_ids``, checked: the
    model computes the image's 2-D positions from it)."""
    require_mrope_inputs(batch)
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}
