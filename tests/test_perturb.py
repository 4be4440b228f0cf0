"""The robustness perturbations (``data.perturb``) on fixed images: what each one does, the spec parser, the
config keys, and a cross-check against IMDLBenCo's own transforms in its venv."""

from __future__ import annotations

import io
import json
import os
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image

from qwen_forensics.config.loading import ConfigError
from qwen_forensics.data.perturb import (FIELD_GRID, Perturbation, image_seed, jpeg_roundtrip, parse_perturbations,
                                         perturb_image)
from qwen_forensics.task_configs import Task1HeadEvalConfig, Task2InferConfig, Task3EvalConfig
from scripts import IMDLBENCO_PYTHON, needs_imdlbenco


def _photo(h: int = 64, w: int = 96) -> np.ndarray:
    """A fixed RGB image with gradients, edges and texture (JPEG and blur both change it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx // 8 + yy // 8) % 2) * 200 + 20], axis=-1)
    return np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- each perturbation
@pytest.mark.parametrize("quality", [100, 90, 50])
def test_jpeg_is_what_pils_encoder_at_the_drawn_quality_decodes_to(quality):
    rgb = _photo()
    perturbation = Perturbation("jpeg", quality)
    seed = image_seed(5, perturbation, rgb)
    drawn = int(np.random.default_rng(seed).integers(quality - 1, quality, endpoint=True))
    # IMDLBenCo hands the RGB array to OpenCV, which reads it as BGR: PIL given the reversed channels encodes
    # the same picture.
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., ::-1])).save(buffer, "JPEG", quality=drawn)
    expected = np.asarray(Image.open(buffer))[..., ::-1]
    got = perturbation.apply(rgb, seed)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, rgb)


def test_jpeg_quality_is_drawn_from_q_minus_1_and_q():
    rgb = _photo()
    outputs = {tuple(jpeg_roundtrip(rgb, q).ravel()[:4000]): q for q in (89, 90)}
    drawn = {outputs[tuple(Perturbation("jpeg", 90).apply(rgb, seed).ravel()[:4000])] for seed in range(40)}
    assert drawn == {89, 90}


@pytest.mark.parametrize("kernel", [3, 7, 11, 23])
def test_blur_is_opencvs_gaussian_of_that_kernel_with_its_default_sigma(kernel):
    rgb = _photo()
    got = Perturbation("blur", kernel).apply(rgb, 0)
    np.testing.assert_array_equal(got, cv2.GaussianBlur(rgb, (kernel, kernel), 0))
    # Sigma 0 means OpenCV's documented default: its fixed binomial-like taps up to K = 7, above that the
    # Gaussian of sigma = 0.3 * ((K - 1) / 2 - 1) + 0.8. The result is that separable filter, up to OpenCV's
    # fixed-point taps and rounding (at most 1.5 grey levels, 0.5 on average).
    taps = cv2.getGaussianKernel(kernel, 0).ravel()
    if kernel > 7:
        sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
        x = np.arange(kernel) - (kernel - 1) / 2
        gauss = np.exp(-x ** 2 / (2 * sigma ** 2))
        np.testing.assert_allclose(taps, gauss / gauss.sum(), rtol=1e-6)
    exact = cv2.sepFilter2D(rgb.astype(np.float64), -1, taps, taps, borderType=cv2.BORDER_REFLECT_101)
    error = np.abs(got - exact)
    assert error.max() <= 1.5 and error.mean() < 0.5
    assert np.abs(got.astype(int) - rgb).mean() > 2


@pytest.mark.parametrize("variance", FIELD_GRID["noise"])
def test_noise_variance_on_flat_grey_is_within_5_percent_of_the_level(variance):
    grey = np.full((256, 256, 3), 128, dtype=np.uint8)
    got = Perturbation("noise", variance).apply(grey, 11).astype(np.float64)
    # uint8 truncation moves the mean by about -0.5 without changing the spread much.
    measured = got.var()
    assert abs(measured - variance) <= 0.05 * variance, (measured, variance)
    assert abs(got.mean() - 127.5) < 0.2


@pytest.mark.parametrize("factor", FIELD_GRID["resize"])
def test_resize_gives_the_scaled_size_and_resizes_only_then_the_mask(factor):
    rgb = _photo(101, 150)
    got = Perturbation("resize", factor).apply(rgb, 0)
    assert got.shape == (round(101 * factor), round(150 * factor), 3)
    mask = np.zeros((101, 150), dtype=bool)
    mask[20:60, 30:90] = True
    small = Perturbation("resize", factor).mask(mask)
    assert small.dtype == bool and small.shape == got.shape[:2]
    assert abs(small.mean() - mask.mean()) < 0.03
    assert Perturbation("jpeg", 50).mask(mask) is mask


def test_draws_depend_on_seed_condition_and_pixels_only():
    rgb = _photo()
    noise = Perturbation("noise", 11)
    one = perturb_image(Image.fromarray(rgb), noise, 3)
    again = perturb_image(Image.fromarray(rgb.copy()), noise, 3)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(again))
    assert not np.array_equal(np.asarray(one), np.asarray(perturb_image(Image.fromarray(rgb), noise, 4)))
    assert image_seed(3, noise, rgb) != image_seed(3, Perturbation("noise", 15), rgb)
    other = rgb.copy()
    other[0, 0, 0] ^= 1
    assert image_seed(3, noise, rgb) != image_seed(3, noise, other)
    np.testing.assert_array_equal(np.asarray(perturb_image(Image.fromarray(rgb).convert("L"), None)),
                                  np.asarray(Image.fromarray(rgb).convert("L").convert("RGB")))


# --------------------------------------------------------------------------------------- specs and configs
def test_field_is_the_21_conditions_of_the_grid_in_order():
    field = parse_perturbations(["field"])
    assert len(field) == 21
    assert [p.name for p in field[:7]] == ["jpeg:100", "jpeg:90", "jpeg:80", "jpeg:70", "jpeg:60", "jpeg:50", "blur:3"]
    assert [p.name for p in field[-3:]] == ["resize:0.75", "resize:0.5", "resize:0.25"]
    assert parse_perturbations(["jpeg:90,70", "field"])[:3] == [Perturbation("jpeg", 90), Perturbation("jpeg", 70),
                                                                Perturbation("jpeg", 100)]


@pytest.mark.parametrize("spec, message", [
    ("jpeg", "write KIND:LEVEL"), ("jpeg:101", "integer in 1..100"), ("blur:4", "odd integer >= 3"),
    ("noise:0", "must be > 0"), ("resize:1.5", r"in \(0, 1\]"), ("sharpen:3", "use one of jpeg, blur, noise, resize"),
    ("jpeg:9x", "'9x' is not a number")])
def test_a_bad_spec_names_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_perturbations([spec])


@pytest.mark.parametrize("config", [Task1HeadEvalConfig, Task2InferConfig, Task3EvalConfig])
def test_evaluation_configs_check_perturb(config):
    assert config(perturb=["field"]).perturb == ["field"] and config().perturb == [] and config().perturb_seed == 0
    with pytest.raises(ConfigError, match="perturb: blur:4"):
        config(perturb=["blur:4"])


# --------------------------------------------------------------------------------------- IMDLBenCo itself
IMDLBENCO_SCRIPT = """
import json, sys
import numpy as np
import albumentations as albu
from IMDLBenCo.transforms.robustness_wrapper import GaussianBlurWrapper, GaussianNoiseWrapper, JpegCompressionWrapper
image = np.load(sys.argv[1])
out = {}
for level, transform in GaussianBlurWrapper([3, 7, 23]):
    out[f"blur:{level}"] = transform(image=image)["image"]
grey = np.full((256, 256, 3), 128, dtype=np.uint8)
for level, transform in GaussianNoiseWrapper([3, 23]):
    out[f"noise:{level}"] = transform(image=grey)["image"]
for level, transform in JpegCompressionWrapper([90, 50]):
    out[f"jpeg:{level}"] = np.stack([transform(image=image)["image"] for _ in range(30)])
np.savez(sys.argv[2], **out)
print(json.dumps(sorted(out)))
"""


@needs_imdlbenco
def test_perturbations_match_imdlbencos_robustness_transforms(tmp_path):
    rgb = _photo()
    np.save(tmp_path / "image.npy", rgb)
    done = subprocess.run([str(IMDLBENCO_PYTHON), "-c", IMDLBENCO_SCRIPT, str(tmp_path / "image.npy"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])
    theirs = np.load(tmp_path / "out.npz")
    for kernel in (3, 7, 23):
        np.testing.assert_array_equal(Perturbation("blur", kernel).apply(rgb, 0), theirs[f"blur:{kernel}"])
    for variance in (3, 23):
        # Different random streams: the distributions must agree (variance, mean, clipping, truncation).
        ours = Perturbation("noise", variance).apply(np.full((256, 256, 3), 128, np.uint8), 1).astype(float)
        other = theirs[f"noise:{variance}"].astype(float)
        assert abs(ours.var() - other.var()) <= 0.05 * variance and abs(ours.mean() - other.mean()) < 0.1
    for quality in (90, 50):
        # Each of their 30 draws is one of our two candidate outputs, and both qualities occur.
        candidates = {q: jpeg_roundtrip(rgb, q) for q in (quality - 1, quality)}
        matched = {q for draw in theirs[f"jpeg:{quality}"] for q, ours in candidates.items()
                   if np.array_equal(draw, ours)}
        assert all(any(np.array_equal(d, c) for c in candidates.values()) for d in theirs[f"jpeg:{quality}"])
        assert matched == {quality - 1, quality}

