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

import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .data.records import video_key

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

_SATURATED = np.array(
    [(255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 0), (0, 0, 255)],
    dtype=np.float32,
)
_NOISE_SIGMA = 3.0
_SCENE_DOWNSCALE = 4


@dataclass(frozen=True)
class _Video:
    split: str
    label: int
    stem: str
    size: tuple[int, int]
    frames: tuple[int, ...]
    kind: str | None
    seed: int
    quality: int

    def file_name(self, frame: int) -> str:
        return f"{self.stem}__frame{frame:05d}.jpg"


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


def _plan_split(rng, split, n_images, sizes, frames_per_video, kind_weights, used_ids) -> list[_Video]:
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
            videos.append(_Video(
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


def _pick_val_videos(rng, videos: list[_Video], val_fraction: float) -> set[str]:
    val = set()
    for label in (1, 0):
        stems = [v.stem for v in videos if v.label == label]
        n_val = min(len(stems) - 1, max(1, round(len(stems) * val_fraction)))
        val.update(stems[i] for i in rng.permutation(len(stems))[:n_val])
    return val


def _render_all(videos: list[_Video], data_dir: Path, workers: int) -> list[list[dict]]:
    if workers <= 1:
        return [_render_video(video, data_dir) for video in videos]
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_render_video, videos, [data_dir] * len(videos), chunksize=4))


def _render_video(video: _Video, data_dir: Path) -> list[dict]:
    rng = np.random.default_rng(video.seed)
    h, w = video.size
    short = min(h, w)
    margin = max(4, short // 40)
    canvas = _scene(rng, h + 2 * margin, w + 2 * margin)
    region = _Region.sample(rng, h, w) if video.label == 1 else None
    style = _Style.sample(rng, video.kind, h, w) if video.label == 1 else None
    image_dir = f"{video.split}/image"
    records = []
    for i, frame_no in enumerate(video.frames):
        name = video.file_name(frame_no)
        oy, ox = (int(x) for x in rng.integers(0, 2 * margin + 1, size=2))
        frame = canvas[oy:oy + h, ox:ox + w].astype(np.float32)
        if region is not None:
            alpha, box = region.alpha(i, h, w)
            change = _manipulate(frame, alpha, box, style)
            mask = _soft_mask(rng, change)
            _save_jpeg(mask, data_dir / video.split / "spatial_localize" / name, quality=80)
            mask_path = f"{video.split}/spatial_localize/{name}"
        else:
            mask_path = f"{h}x{w}"
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * _NOISE_SIGMA
        _save_jpeg(frame, data_dir / image_dir / name, quality=video.quality)
        records.append({"image_path": f"{image_dir}/{name}", "mask_path": mask_path,
                        "label": video.label})
    return records


def _scene(rng, h: int, w: int) -> np.ndarray:
    """Natural-ish background: gradient, low-frequency texture and soft colour blobs.

    Built at 1/4 resolution and upsampled bicubically: everything here is smooth, and it keeps
    generation of 720x1280 frames cheap.
    """
    lh, lw = max(8, -(-h // _SCENE_DOWNSCALE)), max(8, -(-w // _SCENE_DOWNSCALE))
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    yy /= lh - 1
    xx /= lw - 1
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * t[..., None]
    # Texture is mostly shared across channels (luminance), with a weaker colour component,
    # at two scales: broad shading and mid-frequency detail.
    for cells, luma, chroma in ((5, 18.0, 6.0), (24, 5.0, 1.5)):
        field = rng.standard_normal((cells, max(2, round(cells * lw / lh)), 4)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(field[..., c]).resize((lw, lh), Image.BICUBIC))
                       for c in range(4)], axis=-1)
        img += luma * up[..., :1] + chroma * up[..., 1:]
    aspect = lw / lh
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0, 1, size=2)
        ry = rng.uniform(0.1, 0.35)
        rx = ry / aspect * rng.uniform(0.6, 1.6)
        a = rng.uniform(0.3, 0.7) * np.exp(-0.5 * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
        colour = rng.uniform(30, 225, size=3).astype(np.float32)
        img = img * (1 - a[..., None]) + colour * a[..., None]
    low = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))
    return np.asarray(low.resize((w, h), Image.BICUBIC))


@dataclass(frozen=True)
class _Region:
    """Manipulated region: shape and size fixed per video, drifting slowly across frames."""

    shape: str
    cy: float
    cx: float
    ry: float
    rx: float
    dy: float
    dx: float
    lobes: tuple[tuple[float, float, float, float], ...]

    @staticmethod
    def sample(rng, h: int, w: int) -> "_Region":
        short = min(h, w)
        ry, rx = rng.uniform(0.15, 0.28, size=2) * short
        drift = 0.01 * short
        cy = rng.uniform(ry + 3 * drift + 4, h - ry - 3 * drift - 4)
        cx = rng.uniform(rx + 3 * drift + 4, w - rx - 3 * drift - 4)
        # Blob lobes (offset y, offset x, radius y, radius x) in units of the region radii; the
        # central lobe keeps the union connected and at least as large as the size floor.
        lobes = ((0.0, 0.0, 0.75, 0.75),) + tuple(
            (float(oy), float(ox), float(r1), float(r2))
            for oy, ox, r1, r2 in np.column_stack([
                rng.uniform(-0.45, 0.45, size=(3, 2)), rng.uniform(0.4, 0.55, size=(3, 2))]))
        return _Region(
            shape=str(rng.choice(["ellipse", "rectangle", "blob"])),
            cy=float(cy), cx=float(cx), ry=float(ry), rx=float(rx),
            dy=float(rng.uniform(-drift, drift)), dx=float(rng.uniform(-drift, drift)),
            lobes=lobes,
        )

    def alpha(self, frame_index: int, h: int, w: int) -> tuple[np.ndarray, tuple[slice, slice]]:
        """Feathered region weight in [0, 1] inside a bounding box, and that box."""
        feather = max(1.5, 0.008 * min(h, w))
        pad = int(math.ceil(3 * feather)) + 2
        cy = self.cy + self.dy * frame_index
        cx = self.cx + self.dx * frame_index
        y0, y1 = max(0, int(cy - self.ry) - pad), min(h, int(cy + self.ry) + pad + 1)
        x0, x1 = max(0, int(cx - self.rx) - pad), min(w, int(cx + self.rx) + pad + 1)
        hard = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(hard)
        ly, lx = cy - y0, cx - x0
        if self.shape == "ellipse":
            draw.ellipse([lx - self.rx, ly - self.ry, lx + self.rx, ly + self.ry], fill=255)
        elif self.shape == "rectangle":
            draw.rectangle([lx - self.rx, ly - self.ry, lx + self.rx, ly + self.ry], fill=255)
        else:
            for oy, ox, r1, r2 in self.lobes:
                by, bx = ly + oy * self.ry, lx + ox * self.rx
                draw.ellipse([bx - r2 * self.rx, by - r1 * self.ry,
                              bx + r2 * self.rx, by + r1 * self.ry], fill=255)
        soft = hard.filter(ImageFilter.GaussianBlur(feather))
        return np.asarray(soft, dtype=np.float32) / 255.0, (slice(y0, y1), slice(x0, x1))


@dataclass(frozen=True)
class _Style:
    """Per-video manipulation parameters, so all frames of a fake video share one method."""

    kind: str
    colours: np.ndarray
    cell: int
    phase: tuple[int, int]
    blur: float
    shift: np.ndarray
    contrast: float
    source: tuple[float, float]

    @staticmethod
    def sample(rng, kind: str, h: int, w: int) -> "_Style":
        short = min(h, w)
        signs = rng.choice([-1.0, 1.0], size=3).astype(np.float32)
        strong = kind == "blur_shift"
        shift = signs * rng.uniform(45, 75, size=3).astype(np.float32) if strong else \
            signs * rng.uniform(15, 30, size=3).astype(np.float32)
        source = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
        return _Style(
            kind=kind,
            colours=_SATURATED[rng.choice(len(_SATURATED), size=2, replace=False)],
            # >= 8 px and ~1/10 of the shorter side, so cells stay several pixels wide at 224.
            cell=max(8, int(round(short * rng.uniform(0.08, 0.12)))),
            phase=(int(rng.integers(0, 64)), int(rng.integers(0, 64))),
            blur=max(4.0, short / 40),
            shift=shift,
            contrast=float(rng.uniform(0.8, 1.2)),
            source=source,
        )


def _manipulate(frame: np.ndarray, alpha: np.ndarray, box, style: _Style) -> np.ndarray:
    """Blend the manipulated content into ``frame`` in place; return the per-pixel change."""
    ys, xs = box
    patch = frame[ys, xs]
    if style.kind == "checker":
        gy = (np.arange(ys.start, ys.stop) + style.phase[0]) // style.cell
        gx = (np.arange(xs.start, xs.stop) + style.phase[1]) // style.cell
        parity = (gy[:, None] + gx[None, :]) % 2
        content = style.colours[parity]
    elif style.kind == "blur_shift":
        # Blur a context window around the box so the edges see real neighbours, not padding.
        ctx = int(math.ceil(3 * style.blur))
        h, w = frame.shape[:2]
        cy0, cy1 = max(0, ys.start - ctx), min(h, ys.stop + ctx)
        cx0, cx1 = max(0, xs.start - ctx), min(w, xs.stop + ctx)
        src = Image.fromarray(np.clip(frame[cy0:cy1, cx0:cx1], 0, 255).round().astype(np.uint8))
        blurred = np.asarray(src.filter(ImageFilter.GaussianBlur(style.blur)), dtype=np.float32)
        content = blurred[ys.start - cy0:ys.stop - cy0, xs.start - cx0:xs.stop - cx0] + style.shift
    elif style.kind == "copy_move":
        content = frame[_copy_source(frame.shape[:2], box, style.source)].copy()
    else:
        mean = patch.mean(axis=(0, 1))
        content = (patch - mean) * style.contrast + mean + style.shift
    content = np.clip(content, 0, 255)
    a = alpha[..., None]
    new_patch = patch * (1 - a) + content * a
    change = np.zeros(frame.shape[:2], dtype=np.float32)
    change[ys, xs] = np.abs(new_patch - patch).mean(axis=-1)
    frame[ys, xs] = new_patch
    return change


def _copy_source(hw: tuple[int, int], box, source: tuple[float, float]) -> tuple[slice, slice]:
    """Source box of the destination's size, inside the frame and as far from it as possible.

    ``source`` (fractions in [0, 1]) picks the position along the axis where the frame leaves more
    room; the other axis is mirrored, so the copied content comes from elsewhere in the frame.
    """
    ys, xs = box
    bh, bw = ys.stop - ys.start, xs.stop - xs.start
    room_y, room_x = hw[0] - bh, hw[1] - bw
    mirror_y, mirror_x = room_y - ys.start, room_x - xs.start
    if room_y >= room_x:
        far_y = 0 if ys.start > room_y / 2 else room_y
        sy, sx = round(far_y + (mirror_y - far_y) * 0.25 * source[0]), mirror_x
    else:
        far_x = 0 if xs.start > room_x / 2 else room_x
        sy, sx = mirror_y, round(far_x + (mirror_x - far_x) * 0.25 * source[1])
    return slice(sy, sy + bh), slice(sx, sx + bw)


def _soft_mask(rng, change: np.ndarray) -> np.ndarray:
    inside = change[change > 0]
    scale = max(float(np.percentile(inside, 99)) if inside.size else 1.0, 1.0)
    mask = np.clip(change / scale, 0, 1) * 255.0
    return mask + np.abs(rng.standard_normal(mask.shape, dtype=np.float32))


def _save_jpeg(array: np.ndarray, path: Path, quality: int) -> None:
    img = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))
    # Encode to memory first so an interrupted run never leaves a truncated JPEG behind.
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
