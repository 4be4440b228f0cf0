"""Task 2's training-set format (written by map.py, read by LORA.py) and the resumable map job.

Training-set format (JSON Lines, one object per image)::

    {"index": 17,                                  position in the source index
     "image_path": "trainingset2/image/X.jpg",     relative to data_root, as in the index
     "label": 1,
     "messages": [{"role": "user", "content": [{"type": "image", "image": "trainingset2/image/X.jpg"},
                                               {"type": "text", "text": "<prompt>"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Fake"}]}],
     "image_hw": [720, 1280], "file_size": 123456, "sha256": "<hex digest of the image file>"}

Next to the training set map.py writes ``<stem>.source.json`` (``train.jsonl`` -> ``train.source.json``,
``records.jsonl`` -> ``records.source.json``): the data root the image paths are relative to and the
index they were mapped from, so that every reader opens the images where map.py found them
(:func:`images_root`).

No pixels are stored and nothing is re-encoded: training decodes the original file (the seed stored
float tensors, ~5 MB per image, and re-encoding would alter the traces a detector learns from). The
size and SHA-256 let training refuse an image that changed after mapping. A record costs about
0.4-0.6 KB (two copies of the path, the prompt, the digest); ``MapResult.bytes_per_record`` reports
the exact figure of a run, and the batch files cost the same again.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from qwen_forensics.config.paths import relocate_path
from qwen_forensics.data.collate import make_collator
from qwen_forensics.data.records import load_index
from qwen_forensics.data.validate import apply_bad_sample_policy, validate_records
from qwen_forensics.files import TMP_SUFFIX, atomic_concat, atomic_write_lines, atomic_write_text
from qwen_forensics.prompts import PromptSetup, answer_token_ids, build_messages

MANIFEST_NAME = "map_manifest.json"
SOURCE_SUFFIX = ".source.json"

BATCH_PATTERN = "batch_{:05d}.jsonl"

_HASH_CHUNK = 1 << 20


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


def source_file(dataset_path: str | os.PathLike) -> Path:
    """The file map.py writes next to a training set, naming the data root and index it was mapped from."""
    path = Path(dataset_path)
    return path.with_name(path.stem + SOURCE_SUFFIX)


@dataclass(frozen=True)
class Task2Data:
    """A training set: its samples, the one prompt / answer pair they all share, and the data root
    map.py recorded for it (None for a set without its source file)."""
    path: str
    samples: list[Task2Sample]
    prompt_text: str
    answers: dict[int, str]
    data_root: str | None = None
    annotation_file: str | None = None

    def setup(self, image_size: int | None) -> PromptSetup:
        return PromptSetup(image_size, self.prompt_text, self.answers[1], self.answers[0])


def images_root(data: Task2Data, configured: str | None, root: str | None = None,
                key: str = "data_root") -> tuple[str, str | None]:
    """Where the images of a mapped training set are: ``(folder, note to print or None)``.

    ``configured``: the config's ``data_root`` (None when it names none). The data root map.py
    recorded is used unless the config names one, which then wins and the note says it replaced
    the recorded one. ``root`` relocates a recorded path under the user's default root like every
    config path (``--root``). A set that records no data root needs ``data_root`` in the config.
    """
    mapped = relocate_path(data.data_root, root) if data.data_root else None
    if configured is not None:
        if mapped and Path(mapped) != Path(configured):
            return configured, (f"{key} {configured} replaces the data root map.py recorded for {data.path} "
                                f"({mapped}, in {source_file(data.path)})")
        return configured, None
    if mapped:
        return mapped, f"{data.path}: images are read from the data root map.py recorded, {mapped}"
    raise SystemExit(f"stopped before loading any model: {data.path} records no data root (no "
                     f"{source_file(data.path).name} next to it: mapped by an older map.py or copied without it); "
                     f"set {key} in the config to the folder its image paths are relative to, or rerun map.py")


def check_images(data: Task2Data, folder: str, key: str = "data_root") -> None:
    """Stop before any model loads when images of the training set are not under ``folder``."""
    missing = [s.image_path for s in data.samples if not (Path(folder) / s.image_path).is_file()]
    if not missing:
        return
    origin = (f"the data root map.py recorded in {source_file(data.path)} (mapped from {data.annotation_file})"
              if data.data_root and Path(folder) == Path(data.data_root) else f"{key}")
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise SystemExit(f"stopped before loading any model: {len(missing)} of {len(data.samples)} images of the training "
                     f"set {data.path} are not under {folder} ({origin}): {shown}. Set {key} in the config to the "
                     "folder the index's image paths are relative to, or rerun map.py with the right data_root.")


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
    source = _read_source(source_file(path))
    return Task2Data(str(path), samples, prompts[0], single, source.get("data_root"), source.get("annotation_file"))


def _read_source(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise _format_error(str(path), f"not valid JSON ({err})") from None
    if not isinstance(source, dict) or not isinstance(source.get("data_root"), str):
        raise _format_error(str(path), 'expected an object with a "data_root" string')
    return source


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
        "fake_token": job.fake_word,
        "real_token": job.real_word,
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


def run_map(cfg, processor, *, workers: int | None = None, progress: bool = True) -> list[MapResult]:
    """Every index of a ``Task2MapConfig`` (``cfg.jobs()``) -> validated training set, in resumable batches.

    ``processor`` (the model's) checks first that each job's answer words are single tokens after
    the assistant header and that their supervision can be located, naming the config keys.

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
    for job in jobs:
        answer_token_ids(processor, job.fake_word, job.real_word)
        make_collator(processor, PromptSetup(None, job.prompt_text, job.fake_word, job.real_word), train=True)
    return [_run_map_job(cfg, job, workers, progress) for job in jobs]


def _run_map_job(cfg, job, workers: int, progress: bool) -> MapResult:
    data_root = Path(job.data_root)
    batch_dir = Path(job.batch_output_dir)
    final_path = Path(job.final_dataset_path)
    setup = PromptSetup(None, job.prompt_text, job.fake_word, job.real_word)
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
    atomic_write_text(source_file(final_path), json.dumps(
        {"data_root": str(data_root), "annotation_file": str(job.annotation_file), "records": len(good)},
        indent=1, ensure_ascii=False) + "\n")
    return MapResult(name=job.name, records=len(good), skipped=report.num_skipped, batches_total=len(chunks),
                     batches_written=written, final_path=str(final_path), final_bytes=final_path.stat().st_size,
                     batch_bytes=sum(p.stat().st_size for p in paths), batch_dir=str(batch_dir))
