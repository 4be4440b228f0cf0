"""Distributed-safe prediction: the forensic heads, the answer-token probability and the hybrid
model, plus :class:`SplitEvaluator`, which runs an index split the same way for every evaluation.

Each process predicts its shard of the loader and ``gather_in_order`` gathers everything once at
the end, drops the records that the distributed sampler repeats to even out the last batch (by
dataset position), and checks that every record came back exactly once. Scoring at the original
resolution is ``eval_outputs.score_heads``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard
from accelerate.utils import send_to_device
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from qwen_forensics.data.collate import generate_inputs, hybrid_inputs, model_inputs, vision_grid
from qwen_forensics.data.formats import RECORDS
from qwen_forensics.data.perturb import Perturbation
from qwen_forensics.data.records import Record
from qwen_forensics.data.validate import LoadedSplit, load_split
from qwen_forensics.evaluation.metrics import tune_threshold
from qwen_forensics.evaluation.scoring import PixelCounter
from qwen_forensics.files import BackgroundWriter
from qwen_forensics.model.hybrid import HybridModel
from qwen_forensics.model.lora import LoraInputCast
from qwen_forensics.training.runtime import FirstBatch, LoaderClock, autocast, evaluation_speed_line, synchronized_clock


@dataclass
class SplitRun:
    """One evaluated index: the usable records, their gathered predictions (in record order), the
    inference loop's throughput, how many bad records the policy skipped and the index's format."""
    records: list[Record]
    predictions: Any
    seconds: float          # the inference loop alone
    skipped: int
    started: float          # time.perf_counter() when the first split's inference began
    data_wait: float = 0.0  # the part of ``seconds`` spent waiting for the loader
    format: str = RECORDS

    @property
    def images_per_s(self) -> float:
        return len(self.records) / self.seconds


class _DeviceBatches:
    """One pass over a loader (this process's shard) whose workers start now: batches are decoded while
    the caller loads the model, and each is copied to ``device`` without the host waiting (the loader
    pins them)."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.batches = len(loader)
        self.device = device
        self.iterator = iter(loader)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for batch in self.iterator:
            yield send_to_device(batch, self.device, non_blocking=True)


@dataclass
class _Split:
    loaded: LoadedSplit
    perturbation: Perturbation | None = None
    batches: Any = None     # the loader, once opened


def condition_tag(tag: str, perturbation: Perturbation) -> str:
    """The evaluator's tag of an index's perturbed copy (``test@jpeg:90``)."""
    return f"{tag}@{perturbation.name}"


@dataclass
class SplitEvaluator:
    """How every evaluation script runs its indexes. :meth:`start`, before the model loads and before the
    run's output folder is opened: validate each index up front (``on_bad_sample``), so an index that stops
    the run leaves an earlier run's outputs where they are, and open its loader, whose workers begin
    decoding at once, so the first batches are ready when the weights are (under several processes each loader holds this process's shard, accelerate's
    ``BatchSamplerShard``). :meth:`run`: time ``predict(loader, num_records, **kwargs)`` on each,
    which gathers the predictions in order. :meth:`write_skipped`, once the run has started: the records
    ``on_bad_sample: skip`` dropped, listed under ``out_dir/skipped_<tag>`` (nothing is evaluated before).

    ``benchmark_sets.py`` evaluates many indexes with one model: :meth:`validate` each up front,
    :meth:`open` the first, then :meth:`tune` on the validation index and :meth:`evaluate` each in turn;
    the loader of the index after the one being evaluated opens when that one starts, so its first
    batches are decoded meanwhile.

    ``warm_up`` (default: on CUDA): before the first timed loop, ``predict`` runs once on that
    loader's first batch and its output is dropped. The first forward of a process compiles the
    fused kernels (or loads them from Triton's disk cache) and lets cuBLAS and cuDNN pick their
    kernels for these shapes; its seconds are printed on their own ``[warm-up]`` line, so the
    printed images/s is the loop's steady pace. The batch is then evaluated again in the loop.

    Robustness (``--perturb``): :meth:`perturb` queues a perturbed copy of a validated index per condition
    right after it (same records, no second validation); each is evaluated like any index, its loader
    opening while the one before it runs. ``dataset(records, perturbation)`` is then called with the
    condition (``data.perturb.Perturbation``); a clean index is built with ``dataset(records)``."""
    accelerator: Accelerator
    data_root: str
    on_bad_sample: str
    out_dir: Path
    batch_size: int
    num_workers: int
    dataset: Callable[[list[Record]], Dataset]
    collate: Callable
    warm_up: bool | None = None
    _splits: dict[str, _Split] = field(default_factory=dict, init=False, repr=False)
    _unlisted: dict[str, LoadedSplit] = field(default_factory=dict, init=False, repr=False)
    _runs: list[SplitRun] = field(default_factory=list, init=False, repr=False)
    _started: float | None = field(default=None, init=False, repr=False)

    def start(self, test_index: str, val_index: str | None = None) -> None:
        """Validate and open the test index and the validation index (if any)."""
        for tag, index_path in (("val", val_index), ("test", test_index)):
            if index_path:
                self.validate(tag, index_path)
                self.open(tag)

    def validate(self, tag: str, index_path: str) -> LoadedSplit:
        """Read an index in its format and validate it whole (``data.load_split``), under ``tag``."""
        loaded = load_split(index_path, self.data_root, self.on_bad_sample, self.accelerator)
        self._splits[tag] = _Split(loaded)
        self._unlisted[tag] = loaded
        return loaded

    def write_skipped(self) -> None:
        """List each validated index's skipped records under ``out_dir/skipped_<tag>`` (once the run's
        output folder is opened: :meth:`validate` writes nothing); each index once."""
        for tag, loaded in self._unlisted.items():
            loaded.write_skipped(Path(self.out_dir) / f"skipped_{tag}", self.accelerator)
        self._unlisted.clear()

    def perturb(self, tag: str, perturbations: Sequence[Perturbation]) -> list[str]:
        """Queue a perturbed copy of the validated index ``tag`` per condition, evaluated right after it, in
        order; returns their tags (:func:`condition_tag`)."""
        copies = {condition_tag(tag, p): _Split(self._splits[tag].loaded, p) for p in perturbations}
        order = list(self._splits.items())
        at = [k for k, _ in order].index(tag) + 1
        self._splits = dict([*order[:at], *copies.items(), *order[at:]])
        return list(copies)

    def discard(self, tag: str) -> None:
        """Forget a validated index that will not be evaluated."""
        self._splits.pop(tag, None)
        self._unlisted.pop(tag, None)

    def open(self, tag: str) -> None:
        """Open the loader of a validated index (once)."""
        split = self._splits[tag]
        if split.batches is not None:
            return
        dataset = (self.dataset(split.loaded.records) if split.perturbation is None
                   else self.dataset(split.loaded.records, split.perturbation))
        # The shards accelerate's prepared loader would give this process (every record once, the last round
        # filled from the start of the index), in a plain loader: its workers start decoding now, while the
        # weights load, where the prepared one would start them only when the loop first asks for a batch.
        batches = BatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False)
        if self.accelerator.num_processes > 1:
            batches = BatchSamplerShard(batches, self.accelerator.num_processes, self.accelerator.process_index)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=self.collate,
                            pin_memory=self.accelerator.device.type == "cuda")
        split.batches = FirstBatch(_DeviceBatches(loader, self.accelerator.device))

    def _warm_up(self, tag: str, predict: Callable[..., Any], **predict_kwargs) -> None:
        self.open(tag)
        split = self._splits[tag]
        start = synchronized_clock()
        batch = split.batches.first()
        if batch is None:
            return
        # Each process's first batch: together the first (processes x batch size) records.
        predict([batch], min(self.batch_size * self.accelerator.num_processes, len(split.loaded.records)),
                **predict_kwargs)
        self.accelerator.print(f"[warm-up] one throwaway batch before the timed loop (kernel compilation, GEMM "
                               f"selection; the batch is evaluated again in the loop): "
                               f"{synchronized_clock() - start:.2f} s")

    def warm(self, tag: str, predict: Callable[..., Any], **predict_kwargs) -> None:
        """The warm-up (when ``warm_up``, default on CUDA) on ``tag``'s first batch."""
        if self.warm_up if self.warm_up is not None else self.accelerator.device.type == "cuda":
            self._warm_up(tag, predict, **predict_kwargs)

    def evaluate(self, tag: str, predict: Callable[..., Any], **predict_kwargs) -> SplitRun:
        """Time ``predict`` over the index validated under ``tag``; the next index waiting opens meanwhile."""
        self.write_skipped()  # the scripts call it as soon as the run starts; nothing is evaluated unlisted
        self.open(tag)
        split = self._splits.pop(tag)
        waiting = next(iter(self._splits), None)
        if waiting is not None:
            self.open(waiting)
        start = time.perf_counter()
        if self._started is None:
            self._started = start
        clock = LoaderClock(split.batches)
        loaded = split.loaded
        predictions = predict(clock, len(loaded.records), **predict_kwargs)
        run = SplitRun(loaded.records, predictions, time.perf_counter() - start, loaded.skipped, self._started,
                       clock.waited, loaded.format)
        self._runs.append(run)
        return run

    def tune(self, predict: Callable[..., Any], scores: Sequence[str] = ("p_fake",),
             **predict_kwargs) -> dict[str, float | None]:
        """One threshold per score, tuned on the index validated as ``"val"`` (None per score without one)."""
        if "val" not in self._splits:
            return dict.fromkeys(scores)
        val = self.evaluate("val", predict, **predict_kwargs)
        labels = [r.label for r in val.records]
        return {name: tune_threshold(labels, getattr(val.predictions, name)) for name in scores}

    def run(self, predict: Callable[..., Any], *, scores: Sequence[str] = ("p_fake",),
            val_kwargs: Mapping[str, Any] | None = None,
            test_kwargs: Mapping[str, Any] | None = None) -> tuple[SplitRun, dict[str, float | None]]:
        """The validation index (if started) only tunes one threshold per score (an attribute of the
        predictions; None without validation); then the test index, whose inference speed is printed."""
        if "test" not in self._splits:
            raise RuntimeError("SplitEvaluator.run: call start(test_index, val_index) first")
        first = "val" if "val" in self._splits else "test"
        self.warm(first, predict, **((val_kwargs if first == "val" else test_kwargs) or {}))
        tuned = self.tune(predict, scores, **(val_kwargs or {}))
        test = self.evaluate("test", predict, **(test_kwargs or {}))
        return test, tuned

    def records(self, tag: str = "test") -> list[Record]:
        """The usable records of a validated split (before it is evaluated)."""
        return self._splits[tag].loaded.records

    @property
    def evaluated(self) -> int:
        """How many indexes were evaluated so far."""
        return len(self._runs)

    def speed_line(self) -> str:
        """The evaluation's one ``[speed]`` line, printed once its last file is written: every evaluated
        image (validation and test), the inference loops' time and the whole run's, from the first
        batch to now."""
        images = sum(len(run.records) for run in self._runs)
        return evaluation_speed_line(images, sum(run.seconds for run in self._runs),
                                     time.perf_counter() - self._runs[0].started,
                                     sum(run.data_wait for run in self._runs))

    def writes(self, position: int) -> bool:
        """Whether this process writes the files of record ``position`` (its heatmap picture, its submission
        mask): the one whose shard holds the record's own batch. The records the sampler repeats to fill
        the last round are then written once, and every process writes its share while the loop runs
        instead of the main process writing the others' after it."""
        return (position // self.batch_size) % self.accelerator.num_processes == self.accelerator.process_index

    def close(self, *writers: BackgroundWriter | None) -> bool:
        """End the distributed part; True on the process that scores and writes the outputs. Every process
        first waits for the files its ``writers`` still write (the main one's outputs, e.g. the submission's
        zip, read them), then closes the process group before the main one scores (a process that exits
        with it open can abort at interpreter shutdown)."""
        for writer in writers:
            if writer is not None:
                writer.wait()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return self.accelerator.is_main_process


@dataclass
class HeadPredictions:
    """Per-record outputs, ordered by position in the evaluated record list."""
    p_fake: np.ndarray          # [N] sigmoid of the classifier logit
    heatmaps: np.ndarray        # [N, H, W] evidence probabilities on the patch grid (letterboxed canvas)
    counts: np.ndarray | None = None  # [N, 5] pixel counts at the original resolution (``scoring.PixelCounter``)


def gather_in_order(accelerator: Accelerator, positions: list[torch.Tensor], values: dict[str, list[torch.Tensor]],
                    num_records: int) -> dict[str, np.ndarray]:
    """Concatenate per-batch tensors, gather across processes, and order by record position.

    ``positions`` holds each batch's dataset positions, ``values`` per key the matching per-batch
    tensors (first dimension = batch); floating outputs come back as float32 arrays. Under N processes the sampler completes the last round of
    batches with records from the start of the dataset; those repeats are dropped by position.
    (``gather_for_metrics`` cannot do it here: it trims only while the loader is still being
    iterated, and this gather runs once after the loop.) Raises if a record is missing, or if
    more repeats arrive than one padded round can hold, which would silently bias every metric.
    """
    pos = torch.cat(positions)
    cat = {k: torch.cat(v) for k, v in values.items()}
    for key, tensor in cat.items():
        if tensor.shape[0] != pos.shape[0]:
            raise ValueError(f"gather_in_order: {key!r} has {tensor.shape[0]} rows for {pos.shape[0]} positions")
    largest_batch = max(len(p) for p in positions)
    pos, cat = accelerator.gather((pos, cat))
    pos = pos.cpu().numpy()
    unique, first = np.unique(pos, return_index=True)
    repeats = len(pos) - len(unique)
    allowed = accelerator.num_processes * largest_batch - 1 if accelerator.num_processes > 1 else 0
    if len(unique) != num_records or unique[0] != 0 or unique[-1] != num_records - 1 or repeats > allowed:
        raise RuntimeError(f"evaluation gathered {len(pos)} outputs ({len(unique)} distinct positions, {repeats} "
                           f"repeated, at most {allowed} expected from sampler padding) for {num_records} records; "
                           "every record must come back exactly once")
    keep = torch.from_numpy(first)
    # bf16 has no numpy dtype; integer outputs (e.g. generated token ids) keep theirs.
    return {k: (v.cpu()[keep].float() if v.is_floating_point() else v.cpu()[keep]).numpy() for k, v in cat.items()}


@torch.no_grad()
def predict_heads(model: torch.nn.Module, loader, accelerator: Accelerator, amp_dtype: str,
                  num_records: int, counter: PixelCounter | None = None,
                  on_batch: Callable[[Mapping, torch.Tensor], None] | None = None) -> HeadPredictions:
    """Run the ViT + heads over ``loader`` (prepared by ``accelerator``) on every process; with a
    ``counter`` each batch's heatmaps are also scored at the original resolution on the device, and
    ``on_batch(batch, heatmaps)`` sees each batch (``outputs.PictureWriter.on_batch``)."""
    model.eval()
    outputs = {"p": [], "h": [], **({"counts": []} if counter is not None else {})}
    positions = []
    lora_cast = LoraInputCast(model)
    for batch in loader:
        with autocast(accelerator.device, amp_dtype, lora_cast):
            out = model(batch["pixel_values"], vision_grid(batch))
        positions.append(batch["position"])
        outputs["p"].append(torch.sigmoid(out["cls_logit"].float()))
        outputs["h"].append(torch.sigmoid(out["heatmap_logit"].float()))
        if counter is not None:
            outputs["counts"].append(counter(outputs["h"][-1], batch))
        if on_batch is not None:
            on_batch(batch, outputs["h"][-1])
    got = gather_in_order(accelerator, positions, outputs, num_records)
    return HeadPredictions(p_fake=got["p"], heatmaps=got["h"], counts=got.get("counts"))


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


def _pad_id(tokenizer) -> int:
    """What pads generated ids: the tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _generate_ids(model, batch: Mapping[str, torch.Tensor], max_new_tokens: int, pad_token_id: int) -> torch.Tensor:
    """[B, max_new_tokens] greedy continuation ids, padded with ``pad_token_id`` to a fixed width."""
    seq_len = batch["input_ids"].shape[1]
    if not bool((batch["answer_positions"] == seq_len - 1).all()):
        raise ValueError("generated text needs inference batches whose prompt ends every row (left padding, no "
                         "appended answer); build the collator without answers and with padding_side='left'")
    out = model.generate(**generate_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False,
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
        pad_token_id = _pad_id(tokenizer)
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


def answer_scorer(model: torch.nn.Module, accelerator: Accelerator, answer_ids: tuple[int, int], tokenizer):
    """The ``predict`` of a :class:`SplitEvaluator` for the answer-token evaluations (Task 1 subtask 2,
    Task 2): ``predict(loader, num_records, max_new_tokens=0)`` -> :class:`AnswerScores`."""
    fake_token_id, real_token_id = answer_ids

    def predict(loader, num_records: int, max_new_tokens: int = 0) -> AnswerScores:
        return score_answers(model, loader, accelerator, fake_token_id=fake_token_id, real_token_id=real_token_id,
                             num_records=num_records, max_new_tokens=max_new_tokens, tokenizer=tokenizer)
    return predict


def decode_generated(tokenizer, ids) -> list[str]:
    """Generated ids [N, T] (padded with special tokens after each row's end) -> stripped text per row."""
    rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


@torch.no_grad()
def eval_batch(model: HybridModel, batch: Mapping[str, torch.Tensor], answer_ids: tuple[int, int], *,
               amp_dtype: str = "bf16", lora_cast: LoraInputCast | None = None) -> dict[str, torch.Tensor]:
    """One inference forward: ``p_fake_lm``, ``p_fake_head`` [B] and ``heatmap`` [B, H, W] probabilities.

    The LM's answer is read by ``answer_logits`` (the shared definition: softmax over the
    fake and real logits at the answer position); the heads' outputs of the same forward are kept
    by a hook, so the vision tower runs once. ``model`` is the unwrapped hybrid model.
    """
    model.eval()
    kept = {}
    handle = model.register_forward_hook(lambda module, args, output: kept.update(output=output))
    try:
        # Under autocast PEFT's fp32 copy of every LoRA input is cast straight back (exact to skip);
        # a loop over batches passes one ``lora_cast`` instead of walking the modules every batch.
        with autocast(next(model.parameters()).device, amp_dtype, lora_cast or LoraInputCast(model)):
            pair = answer_logits(model, batch, *answer_ids)
    finally:
        handle.remove()
    out = kept["output"]
    return {"p_fake_lm": torch.softmax(pair, dim=-1)[:, 0],
            "p_fake_head": torch.sigmoid(out.cls_logit.float()),
            "heatmap": torch.sigmoid(out.heatmap_logit.float())}


@torch.no_grad()
def greedy_answer_ids(model: HybridModel, batch: Mapping[str, torch.Tensor], max_new_tokens: int, *,
                      eos_token_id: int, pad_token_id: int, amp_dtype: str = "bf16",
                      lora_cast: LoraInputCast | None = None) -> torch.Tensor:
    """[B, max_new_tokens] greedy continuation of each row's prompt: the LM's free-text answer.

    The hybrid model has no generation cache (its soft tokens are made inside the forward from the
    whole image), so each new token is one more full forward over the prompt and the tokens so far;
    the loop stops once every row has emitted ``eos_token_id`` (the end of turn), and a finished
    row's later ids are ``pad_token_id``. The multimodal placeholder tokens (image, video, vision
    start/end, the soft-token slot) are never chosen: appended, they would claim image features or
    slots the prompt does not have. Rows must end with the prompt (``HybridCollator`` without answers).
    """
    inputs = dict(hybrid_inputs(batch))
    input_ids = inputs["input_ids"]
    if not bool((batch["answer_positions"] == input_ids.shape[1] - 1).all()):
        raise ValueError("greedy_answer_ids needs inference batches whose prompt ends every row (left padding, no "
                         "appended answer): build them with HybridCollator without answers")
    config = model.base.config
    banned = torch.tensor([config.image_token_id, config.video_token_id, config.vision_start_token_id,
                           config.vision_end_token_id, model.prompt.slot_token_id], device=input_ids.device)
    rows = input_ids.shape[0]
    out = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    lora_cast = lora_cast or LoraInputCast(model)
    for step in range(max_new_tokens):
        with autocast(input_ids.device, amp_dtype, lora_cast):
            logits = model(**inputs, logits_to_keep=1).logits[:, -1].float()
        logits[:, banned] = float("-inf")
        token = logits.argmax(-1).masked_fill(done, pad_token_id)
        out[:, step] = token
        done |= token == eos_token_id
        if bool(done.all()):
            break
        inputs["input_ids"] = torch.cat([inputs["input_ids"], token[:, None]], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(token[:, None])], dim=1)
        # The new token is text (type 0); hybrid_inputs made sure the key is there.
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token[:, None])], dim=1)
        if "position_ids" in inputs:
            # The collator's mRoPE positions [3, B, L]: a text token after the prompt's last (text) token
            # is one past it in all three components, as get_rope_index would give it.
            inputs["position_ids"] = torch.cat([inputs["position_ids"], inputs["position_ids"][..., -1:] + 1], dim=-1)
    return out


@dataclass
class HybridPredictions:
    """Per-record outputs, ordered by position in the evaluated record list."""
    p_fake_lm: np.ndarray      # [N] from the answer-token logits
    p_fake_head: np.ndarray    # [N] sigmoid of the heads' classifier logit
    heatmaps: np.ndarray       # [N, H, W] evidence probabilities on the patch grid
    generated: list[str] | None = None  # greedy free-text answer per record (only with max_new_tokens > 0)
    counts: np.ndarray | None = None    # [N, 5] the heatmaps' pixel counts (``scoring.PixelCounter``)


def predict_hybrid(model: HybridModel, loader, accelerator: Accelerator, answer_ids: tuple[int, int],
                   amp_dtype: str, num_records: int, *, max_new_tokens: int = 0,
                   tokenizer=None, counter: PixelCounter | None = None,
                   on_batch: Callable[[Mapping, torch.Tensor], None] | None = None) -> HybridPredictions:
    """Run ``eval_batch`` over ``loader`` (prepared by ``accelerator``; ``model`` unwrapped, on the
    device) on every process and gather every record once, in dataset order. With
    ``max_new_tokens > 0`` each record's free-text answer (``greedy_answer_ids``, decoded with
    ``tokenizer``) comes too; it costs one more forward per generated token. With a ``counter`` the
    heads' heatmaps are scored at the original resolution on the device, batch by batch, and
    ``on_batch(batch, heatmaps)`` sees each batch."""
    if max_new_tokens and tokenizer is None:
        raise ValueError("predict_hybrid: pass the tokenizer to decode generated text (max_new_tokens > 0)")
    positions, outputs = [], {"p_fake_lm": [], "p_fake_head": [], "heatmap": []}
    if counter is not None:
        outputs["counts"] = []
    if max_new_tokens:
        outputs["generated"] = []
        pad_id = _pad_id(tokenizer)
    lora_cast = LoraInputCast(model)
    for batch in loader:
        out = eval_batch(model, batch, answer_ids, amp_dtype=amp_dtype, lora_cast=lora_cast)
        if max_new_tokens:
            out["generated"] = greedy_answer_ids(model, batch, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=pad_id, amp_dtype=amp_dtype, lora_cast=lora_cast)
        if counter is not None:
            out["counts"] = counter(out["heatmap"], batch)
        if on_batch is not None:
            on_batch(batch, out["heatmap"])
        positions.append(batch["position"])
        for key in outputs:
            outputs[key].append(out[key])
    got = gather_in_order(accelerator, positions, outputs, num_records)
    return HybridPredictions(p_fake_lm=got["p_fake_lm"], p_fake_head=got["p_fake_head"], heatmaps=got["heatmap"],
                             generated=decode_generated(tokenizer, got["generated"]) if max_new_tokens else None,
                             counts=got.get("counts"))
