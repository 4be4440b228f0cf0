"""Task 2 pieces shared by map.py, LORA.py and lora_infer.py: the training-set format, the resumable
map job, the image dataset, the Trainer collator, the LoRA'd model, and the prompt setup that training
saves next to the adapter and evaluation reads back.

Training-set format (JSON Lines, one object per image, written by ``run_map``)::

    {"index": 17,                                  position in the source index
     "image_path": "trainingset2/image/X.jpg",     relative to data_root, as in the index
     "label": 1,
     "messages": [{"role": "user", "content": [{"type": "image", "image": "trainingset2/image/X.jpg"},
                                               {"type": "text", "text": "<prompt>"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Fake"}]}],
     "image_hw": [720, 1280], "file_size": 123456, "sha256": "<hex digest of the image file>"}

No pixels are stored and nothing is re-encoded: training decodes the original file (the seed stored
float tensors, ~5 MB per image, and re-encoding would alter the traces a detector learns from). The
size and SHA-256 let training refuse an image that changed after mapping. A record costs about
0.4-0.6 KB (two copies of the path, the prompt, the digest); ``MapResult.bytes_per_record`` reports
the exact figure of a run, and the batch files cost the same again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .files import TMP_SUFFIX, atomic_concat, atomic_write_lines
from .checkpoint import read_resolved_config, save_adapter, write_resolved_config
from .config import ConfigError, config_dict, relocate_path
from .data.collate import VisionLanguageCollator, answer_only_inputs, model_inputs
from .data.dataset import model_image
from .data.records import load_index
from .data.validate import apply_bad_sample_policy, validate_records
from .model.loader import get_visual, load_model, load_processor
from .model.lora import LoraInputCast, LoraTargetSpec, check_lora_wrapped, make_lora_config, resolve_targets
from .prompts import answer_token_ids, build_messages


MANIFEST_NAME = "map_manifest.json"
BATCH_PATTERN = "batch_{:05d}.jsonl"
_HASH_CHUNK = 1 << 20
# Keys of the adapter's resolved_config.json that fix what evaluation must feed the model.
SETUP_KEYS = ("image_size", "prompt_text", "fake_token", "real_token")
ANSWER_KEYS = ("fake_token", "real_token")


# ----------------------------------------------------------------------------------- prompt setup
@dataclass(frozen=True)
class PromptSetup:
    """Everything that decides which tokens the model sees and which answer token is read."""
    image_size: int | None  # letterbox side; None = native resolution within the processor's bounds
    prompt_text: str
    fake_token: str
    real_token: str

    @property
    def answers(self) -> dict[int, str]:
        return {0: self.real_token, 1: self.fake_token}


def make_collator(processor, setup: PromptSetup, *, train: bool) -> VisionLanguageCollator:
    """The one collator construction of Task 2: training appends and supervises the answer (right
    padding), evaluation stops at the assistant header (left padding, the answer is read last)."""
    if train:
        return VisionLanguageCollator(processor, setup.prompt_text, answers=setup.answers, padding_side="right")
    return VisionLanguageCollator(processor, setup.prompt_text)


def adapter_setup(lora_path: str | os.PathLike) -> PromptSetup:
    """The prompt setup LORA.py trained with, read from the adapter folder's resolved_config.json."""
    saved = read_resolved_config(lora_path)
    missing = [k for k in SETUP_KEYS if k not in saved]
    if missing:
        raise ValueError(f"{Path(lora_path) / 'resolved_config.json'} lacks {missing}: the adapter was not "
                         "written by Task 2's LORA.py, which records the geometry, prompt and answer words it "
                         "trained with; point lora_path at a LORA.py adapter folder")
    return PromptSetup(**{k: saved[k] for k in SETUP_KEYS})


def resolve_infer_setup(cfg, trained: PromptSetup) -> tuple[PromptSetup, list[str]]:
    """Evaluation setup and notes for the log: the config's explicit values, else the adapter's.

    The answer words are always the trained ones: reading another token's logit (" Fake" for
    "Fake", SPEC 6.3) gives a meaningless AUROC, so a configured word that differs is reported and
    replaced. A different prompt or geometry is allowed (to probe the model) but announced.
    """
    chosen, notes = {}, []
    for key in SETUP_KEYS:
        value = getattr(cfg, key)
        trained_value = getattr(trained, key)
        if value is None or value == trained_value:
            chosen[key] = trained_value
        elif key in ANSWER_KEYS:
            chosen[key] = trained_value
            notes.append(f"{key}={value!r} is not the answer word the adapter was trained with ({trained_value!r}); "
                         f"the trained word {trained_value!r} is read")
        else:
            chosen[key] = value
            notes.append(f"{key}={value!r} differs from the adapter's training value {trained_value!r}; the model is "
                         "evaluated on inputs it was not trained on")
    return PromptSetup(**chosen), notes


# ---------------------------------------------------------------------------------- dataset format
@dataclass(frozen=True)
class Task2Sample:
    index: int
    image_path: str
    label: int
    prompt_text: str
    answer: str
    image_hw: tuple[int, int]
    file_size: int
    sha256: str

    def to_json(self) -> dict:
        user, = build_messages(self.prompt_text)
        user["content"][0]["image"] = self.image_path
        return {
            "index": self.index,
            "image_path": self.image_path,
            "label": self.label,
            "messages": [user, {"role": "assistant", "content": [{"type": "text", "text": self.answer}]}],
            "image_hw": list(self.image_hw),
            "file_size": self.file_size,
            "sha256": self.sha256,
        }


def _format_error(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}. Task 2 training sets are written by map.py; rerun it "
                      "(python Qwen_code/task2_lm_lora/map.py) instead of editing the file.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sample_from_json(obj: Any, where: str) -> Task2Sample:
    """Parse one line of the training set, checking its exact shape."""
    if not isinstance(obj, dict):
        raise _format_error(where, f"expected an object, got {type(obj).__name__}")
    keys = {"index", "image_path", "label", "messages", "image_hw", "file_size", "sha256"}
    if set(obj) != keys:
        raise _format_error(where, f"keys {sorted(obj)} differ from {sorted(keys)}")
    try:
        user, assistant = obj["messages"]
        (image, text), (answer,) = user["content"], assistant["content"]
        roles = (user["role"], assistant["role"], image["type"], text["type"], answer["type"])
        prompt_text, answer_text, message_image = text["text"], answer["text"], image["image"]
        shape_ok = roles == ("user", "assistant", "image", "text", "text") and all(
            isinstance(v, str) for v in (prompt_text, answer_text, message_image))
    except (TypeError, ValueError, KeyError):
        shape_ok = False
    if not shape_ok:
        raise _format_error(where, "messages must be [user: (image, text), assistant: (text)] with string values")
    if message_image != obj["image_path"]:
        raise _format_error(where, f"the message image {message_image!r} is not image_path {obj['image_path']!r}")
    label, hw, sha = obj["label"], obj["image_hw"], obj["sha256"]
    if not _is_int(label) or label not in (0, 1):
        raise _format_error(where, f"label {label!r} is not 0 or 1")
    if not (isinstance(hw, list) and len(hw) == 2 and all(_is_int(v) and v > 0 for v in hw)):
        raise _format_error(where, f"image_hw {hw!r} is not [height, width]")
    if not (_is_int(obj["index"]) and _is_int(obj["file_size"]) and obj["file_size"] >= 0):
        raise _format_error(where, f"index {obj['index']!r} / file_size {obj['file_size']!r} must be integers")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise _format_error(where, f"sha256 {sha!r} is not a hex SHA-256 digest")
    return Task2Sample(index=obj["index"], image_path=message_image, label=label, prompt_text=prompt_text,
                       answer=answer_text, image_hw=(hw[0], hw[1]), file_size=obj["file_size"], sha256=sha)


@dataclass(frozen=True)
class Task2Data:
    """A training set: its samples and the one prompt / answer pair they all share."""
    path: str
    samples: list[Task2Sample]
    prompt_text: str
    answers: dict[int, str]

    def setup(self, image_size: int | None) -> PromptSetup:
        return PromptSetup(image_size, self.prompt_text, self.answers[1], self.answers[0])


def read_task2_dataset(path: str | os.PathLike) -> Task2Data:
    """Read a map.py training set; all records must share one prompt and one answer word per label."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training set {path} does not exist; run map.py first "
                                "(python Qwen_code/task2_lm_lora/map.py) or fix train_dataset_path")
    samples = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _format_error(f"{path}:{line_no}", f"not valid JSON ({err})") from None
            samples.append(sample_from_json(obj, f"{path}:{line_no}"))
    if not samples:
        raise _format_error(str(path), "no records")
    prompts = sorted({s.prompt_text for s in samples})
    if len(prompts) != 1:
        raise _format_error(str(path), f"records use {len(prompts)} different prompts {prompts[:3]}; one is required")
    answers: dict[int, set[str]] = {0: set(), 1: set()}
    for s in samples:
        answers[s.label].add(s.answer)
    for label, words in answers.items():
        if len(words) != 1:
            raise _format_error(str(path), f"label {label} has answers {sorted(words)}; exactly one is required "
                                           "(training needs both real and fake examples)")
    single = {label: words.pop() for label, words in answers.items()}
    if single[0] == single[1]:
        raise _format_error(str(path), f"real and fake share the answer {single[0]!r}")
    return Task2Data(str(path), samples, prompts[0], single)


# ---------------------------------------------------------------------------------------- map job
def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class MapResult:
    name: str
    records: int
    skipped: int
    batches_total: int
    batches_written: list[int]      # batch numbers written by this run (the rest were already done)
    final_path: str
    final_bytes: int
    batch_bytes: int
    batch_dir: str

    @property
    def bytes_per_record(self) -> float:
        return self.final_bytes / self.records


def _manifest(cfg, job, index_digest: str, num_records: int) -> dict:
    return {
        "annotation_file": str(job.annotation_file),
        "annotation_sha256": index_digest,
        "data_root": str(job.data_root),
        "prompt_text": job.prompt_text,
        "fake_token": job.fake_token,
        "real_token": job.real_token,
        "map_batch_size": cfg.map_batch_size,
        "on_bad_sample": cfg.on_bad_sample,
        "records": num_records,
    }


def _check_manifest(batch_dir: Path, manifest: dict) -> None:
    """Finished batches may be reused only if they were made by the same job."""
    path = batch_dir / MANIFEST_NAME
    existing_batches = sorted(batch_dir.glob("batch_*.jsonl"))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        differs = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if differs:
            raise ValueError(f"{batch_dir} holds batches of a different map job (it differs in {differs}); "
                             "delete that folder or set batch_output_dir to a new one")
    elif existing_batches:
        raise ValueError(f"{batch_dir} holds batch files but no {MANIFEST_NAME}; delete them or choose another "
                         "batch_output_dir")
    atomic_write_lines(path, [json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"])


def _build_batch(records, image_sizes: Mapping[int, tuple[int, int]], data_root: Path, prompt_text: str,
                 answers: Mapping[int, str], workers: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(file_digest, [data_root / r.image_path for r in records]))
    lines = []
    for rec, (size, sha) in zip(records, digests):
        sample = Task2Sample(index=rec.index, image_path=rec.image_path, label=rec.label, prompt_text=prompt_text,
                             answer=answers[rec.label], image_hw=image_sizes[rec.index], file_size=size, sha256=sha)
        lines.append(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
    return lines


def run_map(cfg, *, workers: int | None = None, progress: bool = True) -> list[MapResult]:
    """Every index of a ``Task2MapConfig`` (``cfg.jobs()``) -> validated training set, in resumable batches.

    Per index: the whole index is validated up front (every problem reported at once;
    ``on_bad_sample`` applies). Surviving records are cut into batches of ``map_batch_size``; a
    batch file that exists is finished (written under a temporary name, then renamed) and is
    skipped, so a rerun after an interruption only does the missing batches. The batches are then
    merged into the job's ``final_dataset_path``. ``batch_output_dir/map_manifest.json`` pins the
    job's parameters: a rerun with a different index, prompt or batch size refuses to mix old and
    new batches.
    """
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    jobs = cfg.jobs()
    # Fails early, naming the config keys, if the words are not single tokens after the assistant header.
    processor = load_processor(cfg.base_model_path)
    for job in jobs:
        answer_token_ids(processor, job.fake_token, job.real_token)
        make_collator(processor, PromptSetup(None, job.prompt_text, job.fake_token, job.real_token), train=True)
    return [_run_map_job(cfg, job, workers, progress) for job in jobs]


def _run_map_job(cfg, job, workers: int, progress: bool) -> MapResult:
    data_root = Path(job.data_root)
    batch_dir = Path(job.batch_output_dir)
    final_path = Path(job.final_dataset_path)
    setup = PromptSetup(None, job.prompt_text, job.fake_token, job.real_token)
    records = load_index(job.annotation_file)
    report = validate_records(records, data_root, source=str(job.annotation_file), workers=workers)
    good = apply_bad_sample_policy(report, cfg.on_bad_sample, batch_dir)
    batch_dir.mkdir(parents=True, exist_ok=True)
    # Temporary files of a killed run (an exception removes its own): never valid, never reused.
    for stale in [*batch_dir.glob(f".*{TMP_SUFFIX}"), *final_path.parent.glob(f".{final_path.name}.*{TMP_SUFFIX}")]:
        stale.unlink()
    _, index_digest = file_digest(job.annotation_file)
    _check_manifest(batch_dir, _manifest(cfg, job, index_digest, len(good)))

    size = cfg.map_batch_size
    chunks = [good[i:i + size] for i in range(0, len(good), size)]
    paths = [batch_dir / BATCH_PATTERN.format(k) for k in range(len(chunks))]
    written = []
    with tqdm(total=len(good), desc=f"map {job.name}", unit="img", disable=not progress) as bar:
        for k, (chunk, path) in enumerate(zip(chunks, paths)):
            if not path.is_file():
                atomic_write_lines(path, _build_batch(chunk, report.image_sizes, data_root, job.prompt_text,
                                                       setup.answers, workers))
                written.append(k)
            bar.update(len(chunk))
    final_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_concat(final_path, paths)
    return MapResult(name=job.name, records=len(good), skipped=report.num_skipped, batches_total=len(chunks),
                     batches_written=written, final_path=str(final_path), final_bytes=final_path.stat().st_size,
                     batch_bytes=sum(p.stat().st_size for p in paths), batch_dir=str(batch_dir))


# ------------------------------------------------------------------------------------ image dataset
@dataclass(frozen=True)
class ImageEntry:
    """What the image dataset needs per item; ``file_size``/``sha256`` (when known) are verified."""
    image_path: str
    label: int
    file_size: int | None = None
    sha256: str | None = None


class Task2ImageDataset(Dataset):
    """Items ``{"image": PIL RGB, "label", "position"}``: letterboxed to ``image_size``, or the
    original image when ``image_size`` is None (the processor then resizes within its pixel bounds).

    The file is read once; when the entry carries a digest it is checked on those bytes, so a
    training image replaced after map.py is an error instead of a silent label mismatch.
    """

    def __init__(self, entries: Sequence[ImageEntry], data_root: str | os.PathLike, image_size: int | None):
        self.entries = list(entries)
        self.data_root = Path(data_root)
        self.image_size = image_size

    @classmethod
    def from_samples(cls, samples: Sequence[Task2Sample], data_root, image_size) -> "Task2ImageDataset":
        return cls([ImageEntry(s.image_path, s.label, s.file_size, s.sha256) for s in samples], data_root, image_size)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        entry = self.entries[i]
        path = self.data_root / entry.image_path
        data = path.read_bytes()
        changed = entry.sha256 is not None and (len(data) != entry.file_size
                                                or hashlib.sha256(data).hexdigest() != entry.sha256)
        if changed:
            raise ValueError(f"{path} changed after map.py recorded it (size or SHA-256 differ); rerun map.py so "
                             "the training set matches the images")
        with Image.open(io.BytesIO(data)) as img:
            image = model_image(img, self.image_size)
        return {"image": image, "label": entry.label, "position": i}


class TrainerCollator:
    """Wraps the LM collator for ``transformers.Trainer``: the model gets only what its forward takes,
    and projects only the answer positions onto the vocabulary (``collate.answer_only_inputs``)."""

    def __init__(self, collator: VisionLanguageCollator):
        if collator.answers is None:
            raise ValueError("Trainer needs the training collator (answers given), which builds labels")
        self.collator = collator

    def __call__(self, items):
        return answer_only_inputs(model_inputs(self.collator(items)))


# ----------------------------------------------------------------------------------------- the model
def lora_spec(cfg) -> LoraTargetSpec:
    """``Task2TrainConfig`` -> target spec; an empty block list means LoRA on the extra modules only."""
    return LoraTargetSpec(vision_blocks=list(cfg.lora_target_blocks) or None,
                          vision_modules=list(cfg.lora_target_modules),
                          vision_extra_modules=list(cfg.lora_extra_modules))


def attach_lora(model: torch.nn.Module, cfg):
    """Wrap the full model in a PEFT model whose LoRA sits on exactly the configured vision modules."""
    from peft import get_peft_model

    targets = resolve_targets(model, lora_spec(cfg))
    config = make_lora_config(targets, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                              bias=cfg.lora_bias, task_type=cfg.lora_task_type)
    peft_model = get_peft_model(model, config)
    check_lora_wrapped(peft_model, targets)
    return peft_model, targets


def vision_inputs_require_grad(model: torch.nn.Module):
    """Make the patch embedding's output require grad; returns the hook handle.

    With reentrant checkpointing a block's parameters get gradients only if an input of the block
    requires grad. The tower's first input is the frozen patch embedding of pixel values, which does
    not, so every vision LoRA would silently get no gradient. Recent transformers hook the patch
    embedding in ``enable_input_require_grads`` themselves, older ones only the token embeddings;
    this hook makes the gradients independent of the installed version.
    """
    patch_embed = get_visual(model).patch_embed
    return patch_embed.register_forward_hook(lambda module, args, output: output.requires_grad_(True))


_PATH_ARGS = ("output_dir", "logging_dir", "resume_from_checkpoint")
# TrainingArguments keys that transformers renamed; used only when the installed version lacks the old name.
_RENAMED_ARGS = {"warmup_ratio": "warmup_steps", "evaluation_strategy": "eval_strategy", "no_cuda": "use_cpu"}
# Keys transformers 5 dropped that no longer change anything.
_OBSOLETE_ARGS = {
    "logging_dir": "transformers 5 has no logging_dir (TensorBoard reads $TENSORBOARD_LOGGING_DIR)",
    "overwrite_output_dir": "transformers 5 always writes into output_dir",
    "save_safetensors": "transformers 5 always saves safetensors",
}


def _adapt_to_installed(args: dict, known: set[str]) -> list[str]:
    """Translate keys the installed transformers renamed (the seed's config predates v5); returns notes.

    ``warmup_ratio`` became a float ``warmup_steps`` in [0, 1) with the same meaning.
    """
    notes = []
    for old, new in _RENAMED_ARGS.items():
        if old in args and old not in known:
            if new in args:
                raise ConfigError(f"training_args has both {old!r} and {new!r}; this transformers only knows "
                                  f"{new!r}: keep one")
            args[new] = args.pop(old)
            notes.append(f"training_args.{old} -> {new}={args[new]!r} (renamed in this transformers version)")
    for old, why in _OBSOLETE_ARGS.items():
        if old in args and old not in known:
            args.pop(old)
            notes.append(f"training_args.{old} dropped: {why}")
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise ConfigError(f"training_args has keys this transformers' TrainingArguments does not know: {unknown}; "
                          "see the TrainingArguments documentation of the installed version")
    return notes


def choose_precision(args: dict, torch_dtype: str, *, cuda: bool, bf16_supported: bool) -> list[str]:
    """Make ``bf16`` / ``fp16`` in ``args`` fit the hardware and the weights' dtype; returns notes.

    - no CUDA: both off (every task runs float32 on CPU; transformers refuses bf16 there);
    - ``fp16`` with bfloat16 weights (the seed's ``torch_dtype: bfloat16`` + ``fp16: true``): fp16
      autocast over bf16 weights mixes two half formats and overflows where bf16 does not, so bf16
      is used when the GPU supports it;
    - ``bf16`` on a GPU without bf16 support: fp16 instead;
    - both set: an error, as in transformers.
    """
    notes = []
    if args.get("bf16") and args.get("fp16"):
        raise ConfigError("training_args sets both bf16 and fp16; keep one")
    if not cuda:
        for key in ("bf16", "fp16"):
            if args.get(key):
                args[key] = False
                notes.append(f"training_args.{key} -> false: no CUDA device, the CPU run stays in float32")
        return notes
    if args.get("fp16") and torch_dtype == "bfloat16" and bf16_supported:
        args["fp16"], args["bf16"] = False, True
        notes.append("training_args.fp16 -> bf16: the weights are bfloat16 (torch_dtype) and this GPU supports "
                     "bf16; fp16 autocast over bf16 weights overflows where bf16 does not")
    elif args.get("bf16") and not bf16_supported:
        args["bf16"], args["fp16"] = False, True
        notes.append("training_args.bf16 -> fp16: this GPU has no bf16 support")
    return notes


def trainer_arguments(training_args: Mapping[str, Any], root: str | None, out_dir: Path | None, *,
                      torch_dtype: str = "bfloat16", cuda: bool | None = None,
                      bf16_supported: bool | None = None) -> tuple[dict, list[str]]:
    """The user's ``training_args`` as written, with the few adjustments the recipe needs; returns
    (keyword arguments for ``TrainingArguments`` plus ``resume_from_checkpoint``, notes to print).

    - keys the installed transformers renamed are translated (``warmup_ratio`` and friends);
    - paths (``output_dir``, ``logging_dir``, a ``resume_from_checkpoint`` folder) are relocated
      like every other config path (``--root``); relative ones are inside ``out_dir``;
    - ``remove_unused_columns`` must be false: the dataset yields images, not model columns;
    - gradient checkpointing without explicit kwargs gets ``use_reentrant: false``, which keeps the
      vision LoRA gradients whatever the transformers version's default;
    - mixed precision follows :func:`choose_precision` (``cuda`` / ``bf16_supported`` None: detect).
    """
    from transformers import TrainingArguments

    args = json.loads(json.dumps(dict(training_args)))
    notes = _adapt_to_installed(args, {f.name for f in fields(TrainingArguments)})
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if bf16_supported is None:
        # Asked to plan for CUDA on a machine without it (tests): assume a bf16-capable GPU.
        bf16_supported = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cuda
    notes += choose_precision(args, torch_dtype, cuda=cuda, bf16_supported=bf16_supported)
    if not isinstance(args.get("output_dir"), str) or not args["output_dir"]:
        raise ConfigError("training_args.output_dir is required (the Trainer's checkpoint folder)")
    for key in _PATH_ARGS:
        if isinstance(args.get(key), str):
            args[key] = relocate_path(args[key], root, out_dir)
    if args.get("remove_unused_columns", False):
        raise ConfigError("training_args.remove_unused_columns must be false: the collator turns images into model "
                          "inputs, so the Trainer must pass the dataset items through untouched")
    args["remove_unused_columns"] = False
    # The PEFT wrapper's forward hides the model's signature, from which Trainer would infer the label
    # key; without it an evaluation set would report no eval_loss.
    args.setdefault("label_names", ["labels"])
    checkpointing = args.get("gradient_checkpointing") or args.get("activation_checkpointing")
    if checkpointing and not (args.get("gradient_checkpointing_kwargs") or args.get("activation_checkpointing_kwargs")):
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return args, notes


def resolved_training_config(cfg, setup: PromptSetup, training_args: Mapping[str, Any]) -> dict:
    """What LORA.py writes next to the adapter: the config plus the prompt setup it trained with."""
    out = config_dict(cfg)
    out["training_args"] = dict(training_args)
    out.update(asdict(setup))
    return out


@dataclass
class TrainingRun:
    """A ready ``Trainer`` and what LORA.py needs around it."""
    trainer: Any
    setup: PromptSetup
    trainer_kwargs: dict
    resume: str | bool | None
    targets: dict[str, list[str]]

    def train(self):
        return self.trainer.train(resume_from_checkpoint=self.resume)

    def save(self, cfg) -> None:
        """Adapter (PEFT format) + resolved config with the prompt setup; main process only."""
        if self.trainer.is_world_process_zero():
            save_adapter(self.trainer.model, cfg.save_lora_path)
            write_resolved_config(cfg.save_lora_path, resolved_training_config(cfg, self.setup, self.trainer_kwargs))
        self.trainer.accelerator.wait_for_everyone()


def _eval_dataset(cfg, setup: PromptSetup):
    """The ``test_dataset`` of the config as a dataset for the Trainer, or None.

    A string is a map.py output, which must share the training set's prompt and answers; an object
    is the earlier LORA.py's shape, an index (validated like every index) evaluated as it is.
    """
    spec = cfg.test_dataset
    if spec is None:
        return None
    if isinstance(spec, str):
        eval_data = read_task2_dataset(spec)
        if eval_data.setup(cfg.image_size) != setup:
            raise ValueError(f"test_dataset {spec} was mapped with a different prompt or answer words than "
                             f"{cfg.train_dataset_path}; map both with the same config_map.json settings")
        return Task2ImageDataset.from_samples(eval_data.samples, cfg.data_root, setup.image_size)
    data_root = spec.data_root or cfg.data_root
    records = load_index(spec.annotation_file)
    report = validate_records(records, data_root, source=spec.annotation_file)
    records = apply_bad_sample_policy(report, "fail", Path(cfg.out_dir))
    if spec.dataset_limit is not None:
        records = records[: spec.dataset_limit]
    return Task2ImageDataset([ImageEntry(r.image_path, r.label) for r in records], data_root, setup.image_size)


def build_trainer(cfg, root: str | None = None, *, callbacks=None) -> TrainingRun:
    """Everything of LORA.py up to ``trainer.train()`` (``cfg`` is a ``Task2TrainConfig``)."""
    from transformers import Trainer, TrainingArguments, set_seed

    train_data = read_task2_dataset(cfg.train_dataset_path)
    setup = train_data.setup(cfg.image_size)
    eval_dataset = _eval_dataset(cfg, setup)
    trainer_kwargs, notes = trainer_arguments(cfg.training_args, root, Path(cfg.out_dir), torch_dtype=cfg.torch_dtype)
    if eval_dataset is not None and trainer_kwargs.get("eval_strategy", "no") == "no":
        trainer_kwargs["eval_strategy"] = "epoch"
        notes.append("test_dataset given and training_args sets no eval_strategy: evaluating (eval_loss) after "
                     "every epoch")
    resume = trainer_kwargs.pop("resume_from_checkpoint", None)
    args = TrainingArguments(**trainer_kwargs)
    if args.process_index == 0:
        for note in notes:
            print(f"[config] {note}")
        write_resolved_config(args.output_dir, resolved_training_config(cfg, setup, trainer_kwargs))

    # Weights in the configured dtype on GPU; CPU runs stay in float32 (bf16 matmuls there are slow
    # and noisy). PEFT keeps the LoRA weights themselves in float32 either way. Loading straight onto
    # this process's device spares a host copy of the model per torchrun process.
    dtype = cfg.torch_dtype if args.device.type == "cuda" else "float32"
    model = load_model(cfg.base_model_path, dtype=dtype, device=args.device)
    model.config.use_cache = False
    # Trainer seeds only when it is built; the LoRA A matrices are drawn before that.
    set_seed(args.seed)
    model, targets = attach_lora(model, cfg)
    if args.gradient_checkpointing:
        vision_inputs_require_grad(model)
    if args.bf16 or args.fp16:
        # Trainer runs every forward (training and evaluation) under autocast, which makes PEFT's
        # fp32 copy of each LoRA input redundant (see model.lora.LoraInputCast).
        LoraInputCast(model).set(False)

    processor = load_processor(cfg.base_model_path, setup.image_size)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=TrainerCollator(make_collator(processor, setup, train=True)),
        train_dataset=Task2ImageDataset.from_samples(train_data.samples, cfg.data_root, setup.image_size),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )
    return TrainingRun(trainer, setup, trainer_kwargs, resume, targets)
