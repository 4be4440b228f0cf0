"""Synthetic forgery data in the user's exact on-disk layout (SPEC section 2).

The demo and the end-to-end tests need data that looks like the user's ForgeryNet-style set
(video frames, non-square sizes, JPEG soft masks, ``"HxW"`` strings for reals) but is small,
deterministic and learnable by a tiny model in minutes. Layout written under ``root/data/``::

    trainingset2/{image/, spatial_localize/, annotation.json, train_idx.json, val_idx.json}
    testset2/{image/, spatial_localize/, annotation.json}
    .synthetic_demo.json   (marker: parameters and the manipulation kind of every fake)

Design choices that matter downstream:

* Fakes and reals share one background generator, size distribution and JPEG quality range, so
  the only reliable cue is the manipulated region itself.
* Manipulations are sized relative to the shorter side (>= ~30%) and use no fine patterns, so
  they survive letterboxing a 720x1280 frame to 224 or 448.
* ``checker`` (saturated two-colour checkerboard) is the unmistakable kind and the default
  majority; ``blur_shift`` (heavy blur plus a strong colour cast) is also plainly visible;
  ``copy_move`` and ``colour_shift`` are subtler.
* The soft mask grey level is the per-pixel change (mean absolute RGB difference), scaled so the
  99th percentile inside the region is 255, plus faint noise and JPEG artefacts, like the user's
  masks; the data layer's ``>= 0.2 * p99`` rule recovers the region.
* train_idx / val_idx are grouped by video (file name before ``__frame``) and label-balanced.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from qwen_forensics.data.records import video_key
from qwen_forensics.demo.render import Video, render_video

MARKER_NAME = ".synthetic_demo.json"

# (height, width): landscape, portrait and square, 240x320 up to 720x1280 as in the user's set.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (240, 320),
    (320, 240),
    (360, 640),
    (640, 360),
    (300, 300),
    (480, 480),
    (384, 512),
    (720, 1280),
    (1280, 720),
)

STRONG_KINDS = ("checker", "blur_shift")
KINDS = STRONG_KINDS + ("copy_move", "colour_shift")
DEFAULT_KIND_WEIGHTS: Mapping[str, float] = {
    "checker": 0.6,
    "blur_shift": 0.2,
    "copy_move": 0.1,
    "colour_shift": 0.1,
}


def make_demo_dataset(
    root: str | Path,
    *,
    n_train: int = 120,
    n_test: int = 40,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    frames_per_video: int = 4,
    val_fraction: float = 0.2,
    kind_weights: Mapping[str, float] = DEFAULT_KIND_WEIGHTS,
    overwrite: bool = False,
    workers: int = 1,
) -> dict:
    """Write a synthetic forgery set under ``root/data`` and return a summary.

    ``n_train`` images go to ``trainingset2`` (split by video into train_idx / val_idx with about
    ``val_fraction`` of each class's videos in val), ``n_test`` to ``testset2``; both must be even
    (half fake, half real). ``sizes`` are (height, width) pairs cycled per video. The output is a
    pure function of the arguments (``workers`` > 1 renders videos in parallel processes, with the
    same bytes). ``overwrite`` replaces an existing synthetic set; a folder without the marker file
    is never deleted, so real data cannot be wiped by mistake.
    """
    _check_args(n_train, n_test, sizes, frames_per_video, val_fraction, kind_weights)
    data_dir = Path(root) / "data"
    _prepare_dir(data_dir, overwrite)

    master = np.random.default_rng(seed)
    used_ids: set[str] = set()
    train_videos = _plan_split(master, "trainingset2", n_train, sizes, frames_per_video,
                               kind_weights, used_ids)
    test_videos = _plan_split(master, "testset2", n_test, sizes, frames_per_video,
                              kind_weights, used_ids)
    val_stems = _pick_val_videos(master, train_videos, val_fraction)

    kinds_by_image: dict[str, str] = {}
    split_records: dict[str, list[dict]] = {}
    for split, videos in (("trainingset2", train_videos), ("testset2", test_videos)):
        (data_dir / split / "image").mkdir(parents=True)
        (data_dir / split / "spatial_localize").mkdir()
        records = []
        for video, rendered in zip(videos, _render_all(videos, data_dir, workers)):
            records.extend(rendered)
            if video.kind is not None:
                for frame in video.frames:
                    kinds_by_image[f"{split}/image/{video.file_name(frame)}"] = video.kind
        order = master.permutation(len(records))
        split_records[split] = [records[i] for i in order]

    train_all = split_records["trainingset2"]
    val_idx = [r for r in train_all if video_key(r["image_path"]) in val_stems]
    train_idx = [r for r in train_all if video_key(r["image_path"]) not in val_stems]
    _write_json(data_dir / "trainingset2" / "annotation.json", train_all)
    _write_json(data_dir / "trainingset2" / "train_idx.json", train_idx)
    _write_json(data_dir / "trainingset2" / "val_idx.json", val_idx)
    _write_json(data_dir / "testset2" / "annotation.json", split_records["testset2"])

    kind_counts = {k: 0 for k in KINDS}
    for kind in kinds_by_image.values():
        kind_counts[kind] += 1
    params = {
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "sizes": [list(s) for s in sizes],
        "frames_per_video": frames_per_video,
        "val_fraction": val_fraction,
        "kind_weights": dict(kind_weights),
    }
    _write_json(data_dir / MARKER_NAME, {"params": params, "kinds": kinds_by_image})
    return {
        "data_dir": str(data_dir),
        "train_records": len(train_all),
        "train_idx": len(train_idx),
        "val_idx": len(val_idx),
        "test_records": len(split_records["testset2"]),
        "videos": len(train_videos) + len(test_videos),
        "kinds": {k: v for k, v in kind_counts.items() if v},
    }


def _check_args(n_train, n_test, sizes, frames_per_video, val_fraction, kind_weights) -> None:
    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be >= 1, got {frames_per_video}")
    min_train = 4 * frames_per_video
    if n_train % 2 or n_train < min_train:
        raise ValueError(
            f"n_train must be even and >= {min_train} (two videos per class so train and val both "
            f"get each label), got {n_train}")
    if n_test % 2 or n_test < 2:
        raise ValueError(f"n_test must be even and >= 2 (half fake, half real), got {n_test}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not sizes:
        raise ValueError("sizes is empty: give at least one (height, width) pair")
    for h, w in sizes:
        if min(h, w) < 64:
            raise ValueError(f"size {h}x{w} is too small: the shorter side must be >= 64 px")
    unknown = set(kind_weights) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown manipulation kinds {sorted(unknown)}; valid kinds: {list(KINDS)}")
    if any(w < 0 for w in kind_weights.values()) or sum(kind_weights.values()) <= 0:
        raise ValueError(f"kind_weights must be non-negative with a positive sum, got {dict(kind_weights)}")


def _prepare_dir(data_dir: Path, overwrite: bool) -> None:
    targets = [data_dir / "trainingset2", data_dir / "testset2"]
    existing = [p for p in targets if p.exists()]
    if not existing:
        data_dir.mkdir(parents=True, exist_ok=True)
        return
    marker = data_dir / MARKER_NAME
    if not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; choose an empty --root, or pass overwrite=True "
            f"(--overwrite) to replace an earlier synthetic set")
    if not marker.is_file():
        raise FileExistsError(
            f"{existing[0]} exists but {marker} does not, so it is not a synthetic set written by "
            f"this tool; refusing to delete it. Choose another --root")
    for path in existing:
        shutil.rmtree(path)
    marker.unlink()


def _plan_split(rng, split, n_images, sizes, frames_per_video, kind_weights, used_ids) -> list[Video]:
    per_class = n_images // 2
    lengths = [frames_per_video] * (per_class // frames_per_video)
    if per_class % frames_per_video:
        lengths.append(per_class % frames_per_video)
    kinds = _allocate_kinds(rng, len(lengths), kind_weights)
    # Fake video v and real video v share a size, so image size and aspect (visible as letterbox
    # padding) carry no label information.
    size_order = [sizes[i] for i in rng.permutation(len(sizes))]
    videos = []
    for label in (1, 0):
        for v, n_frames in enumerate(lengths):
            if label == 1:
                method = int(rng.integers(1, 16))
                stem = f"{method}__{_new_id(rng, used_ids)}__{_new_id(rng, used_ids)}"
            else:
                stem = f"image__{int(rng.integers(1, 10))}__{_new_id(rng, used_ids)}"
            start, step = int(rng.integers(0, 300)), int(rng.integers(5, 40))
            videos.append(Video(
                split=split,
                label=label,
                stem=stem,
                size=tuple(size_order[v % len(size_order)]),
                frames=tuple(start + k * step for k in range(n_frames)),
                kind=kinds[v] if label == 1 else None,
                seed=int(rng.integers(2**63)),
                quality=int(rng.integers(85, 96)),
            ))
    return videos


def _allocate_kinds(rng, n_videos, kind_weights) -> list[str]:
    """Quota allocation (largest remainder) so the default mix holds even for few videos."""
    names = [k for k in KINDS if kind_weights.get(k, 0) > 0]
    total = sum(kind_weights[k] for k in names)
    exact = [n_videos * kind_weights[k] / total for k in names]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(names)), key=lambda i: (counts[i] - exact[i], i))[: n_videos - sum(counts)]:
        counts[i] += 1
    kinds = [name for name, c in zip(names, counts) for _ in range(c)]
    return [kinds[i] for i in rng.permutation(len(kinds))]


def _new_id(rng, used_ids: set[str]) -> str:
    while True:
        ident = rng.bytes(16).hex()
        if ident not in used_ids:
            used_ids.add(ident)
            return ident


def _pick_val_videos(rng, videos: list[Video], val_fraction: float) -> set[str]:
    val = set()
    for label in (1, 0):
        stems = [v.stem for v in videos if v.label == label]
        n_val = min(len(stems) - 1, max(1, round(len(stems) * val_fraction)))
        val.update(stems[i] for i in rng.permutation(len(stems))[:n_val])
    return val


def _render_all(videos: list[Video], data_dir: Path, workers: int) -> list[list[dict]]:
    if workers <= 1:
        return [render_video(video, data_dir) for video in videos]
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(render_video, videos, [data_dir] * len(videos), chunksize=4))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
