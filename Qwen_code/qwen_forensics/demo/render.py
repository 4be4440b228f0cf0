"""Drawing the synthetic frames: a natural-ish background per video, a manipulated region per fake
(checkerboard, blur + colour cast, copy-move, colour shift), its soft mask and the JPEG files.
``dataset.make_demo_dataset`` plans the videos and writes the indexes; each video renders from its
own seed, so videos can be drawn in any order or in parallel with the same bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from qwen_forensics.files import atomic_write

_SATURATED = np.array(
    [(255, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 0), (0, 0, 255)],
    dtype=np.float32,
)

_NOISE_SIGMA = 3.0

_SCENE_DOWNSCALE = 4


@dataclass(frozen=True)
class Video:
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


def render_video(video: Video, data_dir: Path) -> list[dict]:
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
    # Under a temporary name, then renamed: an interrupted run never leaves a truncated JPEG behind.
    atomic_write(path, lambda tmp: img.save(tmp, format="JPEG", quality=quality))
