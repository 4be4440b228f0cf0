"""Scoring a Qwen2.5-VL model by its answer to the Real/Fake question (Task 1 subtask 2, Task 2, Task 3).

Definition used by every task::

    p_fake = softmax([z_fake, z_real])[0] = sigmoid(z_fake - z_real)

where ``z_fake`` / ``z_real`` are the logits of the fake / real answer tokens (``prompts.answer_token_ids``)
at the batch's ``answer_positions``, i.e. the position whose logits predict the first answer token.
It is the model's probability of "fake" given that it answers with one of the two words, which
equals P(fake) / (P(fake) + P(real)) over the full vocabulary; the other tokens' mass is ignored.

One batched forward per loader batch gives every record's score (SPEC 6.5: per-image ``generate``
is ~4x slower); only the logits at the answer positions are projected onto the vocabulary. With
``max_new_tokens > 0`` a greedy ``generate`` (``do_sample=False``) adds each record's free text as a
separate output, computed after and independently of the probability, which it never replaces.
Outputs of all processes are gathered once, each record exactly once, in dataset order
(``evaluation.gather_in_order``); batches must therefore carry ``position``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from .data.collate import model_inputs
from .evaluation import gather_in_order

__all__ = ["AnswerScores", "answer_logits", "decode_generated", "keyword_label", "score_answers"]


@dataclass
class AnswerScores:
    """Per-record outputs, ordered by dataset position."""
    p_fake: np.ndarray              # [N] softmax over the two answer logits, fake entry
    logit_fake: np.ndarray          # [N] raw logit of the fake token at the answer position
    logit_real: np.ndarray          # [N] raw logit of the real token
    generated: list[str] | None     # greedy free text per record (None unless max_new_tokens > 0)


def answer_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], fake_token_id: int,
                  real_token_id: int) -> torch.Tensor:
    """[B, 2] float32 logits of (fake, real) at each row's ``answer_positions``, from one forward.

    ``logits_to_keep`` restricts the vocabulary projection to the distinct answer positions (one
    with left padding), instead of [B, L, vocab] for the whole sequence.
    """
    positions = batch["answer_positions"]
    keep = torch.unique(positions)
    logits = model(**model_inputs(batch), logits_to_keep=keep, use_cache=False).logits
    column = torch.searchsorted(keep, positions)
    rows = torch.arange(positions.shape[0], device=logits.device)
    picked = logits[rows, column.to(logits.device)]
    return picked[:, [fake_token_id, real_token_id]].float()


def _generate_ids(model, batch: Mapping[str, torch.Tensor], max_new_tokens: int, pad_token_id: int) -> torch.Tensor:
    """[B, max_new_tokens] greedy continuation ids, padded with ``pad_token_id`` to a fixed width."""
    seq_len = batch["input_ids"].shape[1]
    if not bool((batch["answer_positions"] == seq_len - 1).all()):
        raise ValueError("generated text needs inference batches whose prompt ends every row (left padding, no "
                         "appended answer); build the collator without answers and with padding_side='left'")
    out = model.generate(**model_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad_token_id)
    new = out[:, seq_len:]
    padded = torch.full((new.shape[0], max_new_tokens), pad_token_id, dtype=torch.long, device=new.device)
    padded[:, : new.shape[1]] = new
    return padded


@torch.no_grad()
def score_answers(model: torch.nn.Module, loader, accelerator: Accelerator, *, fake_token_id: int,
                  real_token_id: int, num_records: int, max_new_tokens: int = 0, tokenizer=None) -> AnswerScores:
    """Score every record of ``loader`` (``VisionLanguageCollator`` batches, prepared by ``accelerator``).

    ``model`` is the (possibly LoRA'd) ``Qwen2_5_VLForConditionalGeneration``, already on the device
    and not wrapped for DDP (evaluation needs no gradient synchronisation, and ``generate`` is not
    reachable through the wrapper). ``tokenizer`` is required when ``max_new_tokens > 0``, to pad
    and decode the generated text. All processes must call this; all receive the full result.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0 (0: no generated text)")
    if max_new_tokens and tokenizer is None:
        raise ValueError("score_answers: pass the tokenizer to decode generated text (max_new_tokens > 0)")
    pad_token_id = None
    if max_new_tokens:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    positions, logits, generated = [], [], []
    for batch in loader:
        if "position" not in batch:
            raise KeyError("score_answers needs each batch's dataset 'position'; give the dataset items a "
                           "'position' (their index), as ForgeryDataset does")
        positions.append(batch["position"])
        logits.append(answer_logits(model, batch, fake_token_id, real_token_id))
        if max_new_tokens:
            generated.append(_generate_ids(model, batch, max_new_tokens, pad_token_id))
    values = {"logits": logits, **({"generated": generated} if max_new_tokens else {})}
    got = gather_in_order(accelerator, positions, values, num_records)
    pair = torch.from_numpy(got["logits"])
    texts = decode_generated(tokenizer, got["generated"]) if max_new_tokens else None
    return AnswerScores(p_fake=torch.softmax(pair, dim=-1)[:, 0].numpy(), logit_fake=pair[:, 0].numpy(),
                        logit_real=pair[:, 1].numpy(), generated=texts)


def decode_generated(tokenizer, ids) -> list[str]:
    """Generated ids [N, T] (padded with special tokens after each row's end) -> stripped text per row."""
    rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def keyword_label(text: str, fake_word: str, real_word: str) -> int | None:
    """The label a free-text answer names: 1 if it contains only the fake word, 0 if only the real
    word (whole words, case-insensitive), None if it names both or neither."""
    def names(word: str) -> bool:
        return re.search(rf"\b{re.escape(word.strip())}\b", text, flags=re.IGNORECASE) is not None

    fake, real = names(fake_word), names(real_word)
    if fake == real:
        return None
    return 1 if fake else 0


def prediction_rows(records: Sequence, scores: AnswerScores, tuned_threshold: float | None, fake_word: str,
                    real_word: str) -> list[dict]:
    """Per-image output of an LM evaluation: probability, both logits, decisions, optional free text
    with its keyword label (its own column: it never replaces the probability-based decision)."""
    rows = []
    for i, rec in enumerate(records):
        row = {"image_path": rec.image_path, "label": rec.label, "p_fake": float(scores.p_fake[i]),
               "logit_fake": float(scores.logit_fake[i]), "logit_real": float(scores.logit_real[i]),
               "pred@0.5": int(scores.p_fake[i] >= 0.5)}
        if tuned_threshold is not None:
            row["pred@tuned"] = int(scores.p_fake[i] >= tuned_threshold)
        if scores.generated is not None:
            row["generated_text"] = scores.generated[i]
            row["generated_label"] = keyword_label(scores.generated[i], fake_word, real_word)
        rows.append(row)
    return rows


def generated_columns(rows: Sequence[dict]) -> dict[str, float]:
    """CSV columns for generated text: accuracy of its keyword label and how many named neither word."""
    if not rows or "generated_label" not in rows[0]:
        return {}
    named = [r["generated_label"] for r in rows]
    return {"generated_acc": sum(g == r["label"] for g, r in zip(named, rows)) / len(rows),
            "generated_undecided": sum(g is None for g in named)}
