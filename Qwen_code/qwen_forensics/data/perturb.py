"""The robustness perturbations (``--perturb``): the one place they are defined.

The levels mean what they mean in IMDLBenCo's robustness protocol (``IMDLBenCo/transforms/
robustness_wrapper.py`` and the albumentations 1.3 transforms it wraps), so our curves sit beside its
published ones:

- ``jpeg:Q``: re-encode with OpenCV at a quality drawn per image from {Q-1, Q} (albumentations'
  ``JpegCompression(quality_lower=Q-1, quality_upper=Q)``), then decode. As there, the RGB array is
  handed to OpenCV as it is (OpenCV takes it for BGR), which only changes the colour conversion inside
  the encoder the way it changes it for IMDLBenCo.
- ``blur:K``: ``cv2.GaussianBlur`` with a K x K kernel and sigma 0, i.e. OpenCV's own sigma
  ``0.3 * ((K - 1) / 2 - 1) + 0.8`` (OpenCV's fixed-point arithmetic on uint8, bit for bit).
- ``noise:V``: additive Gaussian noise of *variance* V in 0-255 units (standard deviation sqrt(V)),
  drawn independently per pixel and channel, added in floating point, clipped to [0, 255] and truncated
  to uint8 as albumentations' ``GaussNoise(var_limit=(V, V))`` does.
- ``resize:F``: bilinear resize by the factor F (SPAN and PSCC-Net report it); the ground truth is resized
  with nearest neighbour, and the image is scored at its new size. The other perturbations never touch
  the ground truth.

Each perturbation applies to the decoded RGB image at its original resolution, before the letterbox, in
the loader workers. Random draws (the JPEG quality, the noise) come from a generator seeded with the
run's seed, the condition and a checksum of the image's pixels (:func:`image_seed`), so a run is
reproducible whatever the number of workers, the batch size or the order of the images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

KINDS = ("jpeg", "blur", "noise", "resize")
FIELD = "field"
# IMDLBenCo's robustness grid (its test_robust.py) plus the resize factors of SPAN and PSCC-Net.
FIELD_GRID = {"jpeg": (100, 90, 80, 70, 60, 50), "blur": (3, 7, 11, 15, 19, 23), "noise": (3, 7, 11, 15, 19, 23),
              "resize": (0.75, 0.5, 0.25)}
CLEAN_NAME = "none"
SPEC_HELP = ("perturbed copies of the evaluated set, each one more pass with the model loaded once: KIND:LEVEL,... "
             "with KIND jpeg (quality 1-100, drawn per image from {Q-1, Q} as IMDLBenCo does), blur (odd Gaussian "
             "kernel size), noise (Gaussian noise variance in 0-255 units), resize (factor in (0, 1]); e.g. "
             "jpeg:100,50 blur:3,7 noise:3 resize:0.5; 'field' = the whole IMDLBenCo grid jpeg:100..50 blur:3..23 "
             "noise:3..23 resize:0.75,0.5,0.25 (21 conditions). The clean set is always evaluated first")


@dataclass(frozen=True)
class Perturbation:
    """One condition: a kind of :data:`KINDS` and its level (JPEG quality, blur kernel size, noise
    variance, resize factor)."""
    kind: str
    level: float

    def __post_init__(self) -> None:
        check_level(self.kind, self.level)

    @property
    def name(self) -> str:
        """``kind:level`` as the command line writes it (``jpeg:90``, ``resize:0.5``)."""
        return f"{self.kind}:{level_text(self.level)}"

    def apply(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        """The perturbed copy of an RGB uint8 array [H, W, 3]; ``seed`` feeds the random draws."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if self.kind == "jpeg":
            quality = int(np.random.default_rng(seed).integers(int(self.level) - 1, int(self.level), endpoint=True))
            return jpeg_roundtrip(rgb, quality)
        if self.kind == "blur":
            k = int(self.level)
            return cv2.GaussianBlur(rgb, (k, k), 0)
        if self.kind == "noise":
            noise = np.random.default_rng(seed).normal(0.0, float(self.level) ** 0.5, rgb.shape)
            return np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        h, w = resized_size(rgb.shape[0], rgb.shape[1], self.level)
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """The ground truth for this condition: resized (nearest neighbour) under ``resize``, else unchanged."""
        if self.kind != "resize" or mask is None:
            return mask
        h, w = resized_size(mask.shape[0], mask.shape[1], self.level)
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(mask.dtype)


def level_text(level: float) -> str:
    """A level as written on the command line: integers without a decimal point."""
    return str(int(level)) if float(level).is_integer() else repr(float(level))


def check_level(kind: str, level: float) -> None:
    """Raise ValueError naming the fix when ``level`` means nothing for ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"perturbation {kind!r}: use one of {', '.join(KINDS)} (or '{FIELD}')")
    integer = float(level).is_integer()
    shown = level_text(level)
    if kind == "jpeg" and not (integer and 1 <= level <= 100):
        raise ValueError(f"jpeg:{shown}: the JPEG quality is an integer in 1..100")
    if kind == "blur" and not (integer and level >= 3 and int(level) % 2 == 1):
        raise ValueError(f"blur:{shown}: the Gaussian kernel size is an odd integer >= 3")
    if kind == "noise" and not level > 0:
        raise ValueError(f"noise:{shown}: the noise variance (0-255 units) must be > 0")
    if kind == "resize" and not 0 < level <= 1:
        raise ValueError(f"resize:{shown}: the resize factor must be in (0, 1]")


def resized_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """The size an ``h x w`` image has after ``resize:factor`` (rounded, at least 1 pixel)."""
    return max(1, round(h * factor)), max(1, round(w * factor))


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode with OpenCV at ``quality`` and decode, on the array as given (see the module doc)."""
    ok, encoded = cv2.imencode(".jpg", rgb, (int(cv2.IMWRITE_JPEG_QUALITY), int(quality)))
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {rgb.shape}")
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)


def parse_perturbations(specs: Sequence[str] | None) -> list[Perturbation]:
    """The conditions of ``--perturb`` / the ``perturb`` key, in the order given, each once: specs like
    ``jpeg:100,90``, ``blur:3``, ``resize:0.5`` or ``field`` (:data:`FIELD_GRID`). Raises ValueError."""
    out: list[Perturbation] = []
    for spec in specs or ():
        spec = str(spec).strip()
        if spec == FIELD:
            found = [Perturbation(kind, level) for kind, levels in FIELD_GRID.items() for level in levels]
        else:
            kind, sep, levels = spec.partition(":")
            if not sep or not levels:
                raise ValueError(f"perturbation {spec!r}: write KIND:LEVEL[,LEVEL...] with KIND one of "
                                 f"{', '.join(KINDS)}, e.g. jpeg:90,70 or resize:0.5, or '{FIELD}'")
            found = []
            for text in levels.split(","):
                try:
                    level = float(text)
                except ValueError:
                    raise ValueError(f"perturbation {spec!r}: {text!r} is not a number") from None
                found.append(Perturbation(kind.strip().lower(), level))
        out += [p for p in found if p not in out]
    return out


def image_seed(run_seed: int, perturbation: Perturbation, rgb: np.ndarray) -> int:
    """The seed of one image's draws: the run's seed, the condition and the CRC-32 of its pixels, so the
    same image under the same condition draws the same numbers in any worker, batch or order."""
    pixels = zlib.crc32(np.ascontiguousarray(rgb).tobytes())
    entropy = [int(run_seed) & 0xFFFFFFFF, zlib.crc32(perturbation.name.encode()), pixels]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def perturb_image(img: Image.Image, perturbation: Perturbation | None, run_seed: int = 0) -> Image.Image:
    """``img`` as RGB, perturbed (None: unchanged but converted) with the seed of :func:`image_seed`."""
    rgb_image = img.convert("RGB")
    if perturbation is None:
        return rgb_image
    rgb = np.asarray(rgb_image)
    return Image.fromarray(perturbation.apply(rgb, image_seed(run_seed, perturbation, rgb)))
