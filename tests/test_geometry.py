"""Letterbox geometry and its inverse, the mask binarisation rule, and the dataset items."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qwen_forensics.data.dataset import ForgeryDataset
from qwen_forensics.data.geometry import (Letterbox, content_cells, letterbox_geometry, letterbox_image, letterbox_mask,
                                          original_size_heatmap, unletterbox)
from qwen_forensics.data.masks import MaskRule, binarize_mask, load_binary_mask
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation.metrics import PixelMetricAccumulator

SIZES = [(240, 320), (720, 1280), (1280, 720), (500, 500), (1080, 1920)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    "h, w, size, expected",
    [
        (720, 1280, 448, Letterbox(720, 1280, 448, 252, 448, 98, 0)),
        (1280, 720, 448, Letterbox(1280, 720, 448, 448, 252, 0, 98)),
        (500, 500, 448, Letterbox(500, 500, 448, 448, 448, 0, 0)),
        (240, 320, 448, Letterbox(240, 320, 448, 336, 448, 56, 0)),
        (470, 854, 448, Letterbox(470, 854, 448, 247, 448, 100, 0)),
        (1080, 1920, 112, Letterbox(1080, 1920, 112, 63, 112, 24, 0)),
    ],
)
def test_letterbox_geometry_pinned(h, w, size, expected):
    assert letterbox_geometry(h, w, size) == expected


def test_letterbox_geometry_rejects_nonpositive():
    with pytest.raises(ValueError, match="positive sizes"):
        letterbox_geometry(0, 10, 448)


def test_letterbox_image_pads_black_and_keeps_content():
    img = Image.new("RGB", (320, 240), (200, 100, 50))
    out, lb = letterbox_image(img.convert("L"), 224)
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == (224, 224)
    assert lb == letterbox_geometry(240, 320, 224)
    assert arr[: lb.pad_top].max() == 0 and arr[lb.pad_top + lb.new_h :].max() == 0
    content = arr[lb.pad_top : lb.pad_top + lb.new_h]
    assert content.min() > 0 and np.ptp(content) <= 1


def test_letterbox_mask_preserves_area_and_pads_zero():
    mask = np.zeros((720, 1280), bool)
    mask[100:400, 200:900] = True
    lb = letterbox_geometry(720, 1280, 448)
    out = letterbox_mask(mask, lb)
    assert out.shape == (448, 448) and out.dtype == np.float32
    scale = 448 / 1280
    assert out.sum() == pytest.approx(mask.sum() * scale * scale, rel=1e-3)
    assert out[: lb.pad_top].max() == 0 and out[lb.pad_top + lb.new_h :].max() == 0
    with pytest.raises(ValueError, match="mask and image sizes must match"):
        letterbox_mask(mask.T, lb)


def shapes(h: int, w: int, size: int) -> list[np.ndarray]:
    """Rectangles and ellipses at least 32 px across at both the original and the model
    resolution (a shape that shrinks below that on the canvas cannot come back at this IoU),
    including ones touching the image border."""
    min_side = int(np.ceil(32 * max(1.0, max(h, w) / size)))
    yy, xx = np.mgrid[:h, :w]
    out = []
    for k, (fy, fx, fs) in enumerate([(0.1, 0.2, 1.0), (0.0, 0.0, 1.5), (0.5, 0.6, 2.0), (0.3, 0.05, 1.2)]):
        sh = min(h, int(min_side * fs))
        sw = min(w, int(min_side * fs * 1.3))
        y0 = min(int(fy * h), h - sh)
        x0 = min(int(fx * w), w - sw)
        rect = np.zeros((h, w), bool)
        rect[y0 : y0 + sh, x0 : x0 + sw] = True
        out.append(rect)
        cy, cx = y0 + sh / 2, x0 + sw / 2
        out.append(((yy + 0.5 - cy) / (sh / 2)) ** 2 + ((xx + 0.5 - cx) / (sw / 2)) ** 2 <= 1.0)
    return out


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("size", [448, 224])
def test_mask_round_trip_iou(h, w, size):
    lb = letterbox_geometry(h, w, size)
    for shape in shapes(h, w, size):
        back = unletterbox(letterbox_mask(shape, lb), lb)
        assert back.shape == (h, w) and back.dtype == np.float32
        assert iou(shape, back >= 0.5) >= 0.98


@pytest.mark.parametrize("h, w", SIZES + [(470, 854)])
@pytest.mark.parametrize("res", [448, 32])
def test_unletterbox_crops_padding(h, w, res):
    lb = letterbox_geometry(h, w, 448)
    canvas = np.full((448, 448), 100.0, np.float32)
    canvas[lb.pad_top : lb.pad_top + lb.new_h, lb.pad_left : lb.pad_left + lb.new_w] = 1.0
    if res == 448:
        out = unletterbox(canvas, lb)
        np.testing.assert_allclose(out, 1.0, atol=1e-3)
    else:
        # A 32x32 map only knows the padding edge to a cell; what matters is that it is placed
        # in continuous coordinates: a linear ramp in canvas y comes back exactly between the
        # centres of the outermost content cells, and holds the edge cell's value beyond them
        # (padding cells are never blended in).
        step = 448 / res
        ramp = np.repeat(((np.arange(res) + 0.5) * step)[:, None], res, axis=1).astype(np.float32)
        out = unletterbox(ramp, lb)
        rows, _ = content_cells(lb, res)
        y_canvas = lb.pad_top + (np.arange(h) + 0.5) * lb.new_h / h
        expected = np.clip(y_canvas, (rows.start + 0.5) * step, (rows.stop - 0.5) * step)
        np.testing.assert_allclose(out[:, 0], expected, atol=1e-3)
        np.testing.assert_allclose(out[:, -1], expected, atol=1e-3)


def test_unletterbox_patch_grid_places_blob():
    h, w = 720, 1280
    lb = letterbox_geometry(h, w, 448)
    grid = np.zeros((32, 32), np.float32)
    grid[10:14, 20:24] = 1.0  # canvas rows 140..196, cols 280..336
    out = unletterbox(grid, lb) >= 0.5
    ys, xs = np.nonzero(out)
    scale = 1280 / 448
    assert ys.min() == pytest.approx((140 - lb.pad_top) * scale, abs=scale)
    assert ys.max() == pytest.approx((196 - lb.pad_top) * scale, abs=scale)
    assert xs.min() == pytest.approx(280 * scale, abs=scale)
    assert xs.max() == pytest.approx(336 * scale, abs=scale)


def test_unletterbox_keeps_torch_and_checks_shape():
    lb = letterbox_geometry(240, 320, 112)
    out = unletterbox(torch.ones(16, 16, dtype=torch.bfloat16), lb)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (240, 320)
    assert torch.allclose(out, torch.ones_like(out))
    with pytest.raises(ValueError, match="square 2-D map"):
        unletterbox(np.zeros((16, 8)), lb)


# Exact-edge tests: every aspect ratio the data has (and odd ones), at both canvases, for the patch
# grids and full-canvas maps. Cells wholly in the padding get a value no content cell has, so any
# padding that reaches an image pixel shows up.
EDGE_SIZES = [(240, 320), (720, 1280), (1280, 720), (1080, 1920), (1920, 1080), (500, 500), (333, 517), (517, 333), (470, 854)]
GRIDS = [(448, 32), (224, 16), (448, 448), (224, 224)]
PADDING_VALUE = 7.0


def content_map(lb: Letterbox, res: int, content: np.ndarray | float, padding: float = PADDING_VALUE) -> np.ndarray:
    """An r x r map: ``content`` on the cells touching the image, ``padding`` on the others."""
    rows, cols = content_cells(lb, res)
    out = np.full((res, res), padding, np.float32)
    out[rows, cols] = content
    return out


def test_content_cells_pinned():
    lb = letterbox_geometry(720, 1280, 448)  # content rows 98..350 = cells 7..24 exactly (14 px cells)
    assert content_cells(lb, 32) == (slice(7, 25), slice(0, 32))
    assert content_cells(lb, 448) == (slice(98, 350), slice(0, 448))
    odd = letterbox_geometry(333, 517, 448)  # rows 79..368: cells 5 and 26 are partly content
    assert (odd.pad_top, odd.new_h) == (79, 289)
    assert content_cells(odd, 32) == (slice(5, 27), slice(0, 32))


@pytest.mark.parametrize("h, w", EDGE_SIZES)
@pytest.mark.parametrize("size, res", GRIDS)
def test_constant_over_content_cells_comes_back_exactly(h, w, size, res):
    lb = letterbox_geometry(h, w, size)
    for c in (0.0, 0.3, 0.5, 1.0):
        out = unletterbox(content_map(lb, res, c), lb)
        assert out.shape == (h, w) and out.dtype == np.float32
        for name, edge in (("top row", out[0]), ("bottom row", out[-1]), ("left column", out[:, 0]), ("right column", out[:, -1])):
            assert np.array_equal(edge, np.full_like(edge, c)), f"{name} of {h}x{w} at {size}/{res}: {np.unique(edge)[:5]}"
        assert np.array_equal(out, np.full((h, w), c, np.float32))
        back = unletterbox(torch.from_numpy(content_map(lb, res, c)), lb)
        assert isinstance(back, torch.Tensor) and torch.equal(back, torch.full((h, w), c))


@pytest.mark.parametrize("h, w", EDGE_SIZES)
@pytest.mark.parametrize("size, res", GRIDS)
def test_edges_blend_only_content_cells(h, w, size, res):
    """Every output pixel is a convex blend of content cells: never outside their range, edges included."""
    lb = letterbox_geometry(h, w, size)
    rng = np.random.default_rng(h * w + res)
    rows, cols = content_cells(lb, res)
    values = rng.random((rows.stop - rows.start, cols.stop - cols.start)).astype(np.float32)
    out = unletterbox(content_map(lb, res, values), lb)
    lo, hi = values.min(), values.max()
    for edge in (out[0], out[-1], out[:, 0], out[:, -1], out):
        assert edge.min() >= lo and edge.max() <= hi


@pytest.mark.parametrize("h, w", [(720, 1280), (333, 517), (1280, 720)])
@pytest.mark.parametrize("size, res", GRIDS)
def test_interior_is_bilinear(h, w, size, res):
    """Between the centres of the outermost content cells the map is sampled as grid_sample does."""
    lb = letterbox_geometry(h, w, size)
    grid_map = torch.from_numpy(np.random.default_rng(1).random((res, res)).astype(np.float32))
    out = unletterbox(grid_map, lb)
    yc = lb.pad_top + (torch.arange(h, dtype=torch.float64) + 0.5) * lb.new_h / h
    xc = lb.pad_left + (torch.arange(w, dtype=torch.float64) + 0.5) * lb.new_w / w
    grid = torch.stack(torch.meshgrid(2 * yc / size - 1, 2 * xc / size - 1, indexing="ij")[::-1], dim=-1).float()
    reference = F.grid_sample(grid_map[None, None], grid[None], mode="bilinear", align_corners=False)[0, 0]
    rows, cols = content_cells(lb, res)
    step = size / res
    inside_y = (yc >= (rows.start + 0.5) * step) & (yc <= (rows.stop - 0.5) * step)
    inside_x = (xc >= (cols.start + 0.5) * step) & (xc <= (cols.stop - 0.5) * step)
    assert inside_y.float().mean() > 0.9 and inside_x.float().mean() > 0.9
    torch.testing.assert_close(out[inside_y][:, inside_x], reference[inside_y][:, inside_x], atol=2e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_unletterbox_stays_on_the_device_and_matches_the_host():
    lb = letterbox_geometry(333, 517, 448)
    grid_map = torch.rand(32, 32, generator=torch.Generator().manual_seed(0))
    on_gpu = unletterbox(grid_map.cuda(), lb)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), unletterbox(grid_map, lb), atol=1e-6, rtol=0)
    constant = torch.from_numpy(content_map(lb, 32, 0.5)).cuda()
    assert torch.equal(unletterbox(constant, lb), torch.full((333, 517), 0.5, device="cuda"))


def score_through_evaluation(heatmap: np.ndarray, gt: np.ndarray, label: int, size: int, threshold: float) -> dict:
    """The evaluation path: original_size_heatmap, then the pixel metric accumulator."""
    acc = PixelMetricAccumulator(threshold)
    acc.update(original_size_heatmap(heatmap, gt.shape, size), gt, label)
    return acc.compute()


@pytest.mark.parametrize("h, w", EDGE_SIZES)
@pytest.mark.parametrize("size, res", [(448, 32), (224, 16), (448, 448)])
def test_perfect_full_frame_prediction_scores_one(h, w, size, res):
    lb = letterbox_geometry(h, w, size)
    heatmap = content_map(lb, res, 1.0, padding=0.0)
    for threshold in (0.5, 0.9, 1.0):
        metrics = score_through_evaluation(heatmap, np.ones((h, w), bool), 1, size, threshold)
        assert (metrics["pixel_f1"], metrics["pixel_iou"], metrics["ciou"]) == (1.0, 1.0, 1.0), threshold


@pytest.mark.parametrize("h, w", EDGE_SIZES)
@pytest.mark.parametrize("size, res", [(448, 32), (224, 16), (448, 448)])
def test_uniform_prediction_on_real_false_alarm_is_all_or_nothing(h, w, size, res):
    lb = letterbox_geometry(h, w, size)
    real = np.zeros((h, w), bool)
    for c, expected in ((0.6, 1.0), (0.5, 1.0), (0.4, 0.0)):  # positive means prob >= threshold
        heatmap = content_map(lb, res, c, padding=0.0)
        assert score_through_evaluation(heatmap, real, 0, size, 0.5)["false_alarm"] == expected, c


def test_binarize_follows_relative_p99_rule():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 20, (100, 100)).astype(np.uint8)  # JPEG-like noise below 20
    mask[20:60, 30:70] = 200
    mask[25:30, 35:40] = 255
    # p99 = 200/255, threshold 0.2 * that = 40/255: the region stays, the noise goes.
    out = binarize_mask(mask)
    assert out.dtype == bool and out.sum() == 1600 and out[20:60, 30:70].all()
    # A weak mask (same shape, 10x fainter) binarises the same: the rule follows each mask's scale.
    weak = (mask.astype(np.float32) / 2550.0).astype(np.float32)
    assert np.array_equal(binarize_mask(weak), out)
    strict = binarize_mask(mask, MaskRule(rel=1.0, quantile=1.0))
    assert strict.sum() == 25


def test_binarize_all_zero_and_tiny_region():
    assert not binarize_mask(np.zeros((50, 50), np.uint8)).any()
    tiny = np.zeros((100, 100), np.uint8)
    tiny[0, :5] = 200
    tiny[50, 50] = 1  # p99 is 0 here, so every nonzero pixel counts (documented caveat)
    out = binarize_mask(tiny)
    assert out.sum() == 6 and not out[1:50].any()


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        binarize_mask(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize_mask(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="dtype"):
        binarize_mask(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="rel must be in"):
        MaskRule(rel=0.0)
    with pytest.raises(ValueError, match="quantile must be in"):
        MaskRule(quantile=1.5)


def make_pair(root, h=90, w=160):
    img = np.full((h, w, 3), 120, np.uint8)
    Image.fromarray(img).save(root / "fake__frame1.jpg", quality=95)
    Image.fromarray(img).save(root / "real__frame1.jpg", quality=95)
    soft = np.zeros((h, w), np.uint8)
    soft[20:60, 40:100] = 230
    Image.fromarray(soft).save(root / "fake_mask.jpg", quality=90)
    fake = Record("fake__frame1.jpg", "fake_mask.jpg", None, 1, 0)
    real = Record("real__frame1.jpg", None, (h, w), 0, 1)
    return fake, real


def test_load_binary_mask_at_original_resolution(tmp_path):
    fake, real = make_pair(tmp_path)
    gt = load_binary_mask(fake, tmp_path)
    assert gt.shape == (90, 160) and gt.dtype == bool
    assert iou(gt, np.pad(np.ones((40, 60), bool), ((20, 30), (40, 60)))) >= 0.95
    assert not load_binary_mask(real, tmp_path).any() and load_binary_mask(real, tmp_path).shape == (90, 160)
    with pytest.raises(ValueError, match="no \"HxW\""):
        load_binary_mask(Record("x.jpg", "x", None, 0, 3), tmp_path)


def test_dataset_items(tmp_path):
    fake, real = make_pair(tmp_path)
    ds = ForgeryDataset([fake, real], tmp_path, image_size=112)
    assert len(ds) == 2
    item = ds[0]
    assert set(item) == {"image", "mask", "label", "letterbox", "record", "position"}
    lb = item["letterbox"]
    assert lb == letterbox_geometry(90, 160, 112) and item["record"] is fake and item["label"] == 1
    assert item["image"].size == (112, 112) and item["image"].mode == "RGB"
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (112, 112)
    expected = letterbox_mask(load_binary_mask(fake, tmp_path), lb)
    assert np.array_equal(item["mask"].numpy(), expected)
    assert item["mask"].sum().item() == pytest.approx(40 * 60 * (112 / 160) ** 2, rel=0.05)
    real_item = ds[1]
    assert real_item["label"] == 0 and real_item["mask"].abs().sum() == 0 and real_item["mask"].shape == (112, 112)


def test_dataset_rejects_mask_size_mismatch(tmp_path):
    fake, _ = make_pair(tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "fake_mask.jpg")
    with pytest.raises(ValueError, match="mask fake_mask.jpg is 10x10 but the image is 90x160"):
        ForgeryDataset([fake], tmp_path, image_size=112)[0]


def test_evaluation_items_never_open_the_mask(tmp_path, monkeypatch):
    fake, real = make_pair(tmp_path)
    (tmp_path / "fake_mask.jpg").unlink()
    ds = ForgeryDataset([fake, real], tmp_path, image_size=112, with_mask=False)
    items = [ds[0], ds[1]]
    assert [set(i) for i in items] == [{"image", "label", "letterbox", "record", "position"}] * 2
    assert items[0]["image"].tobytes() == ForgeryDataset([real, fake], tmp_path, 112, with_mask=False)[1]["image"].tobytes()
    with pytest.raises(FileNotFoundError):
        ForgeryDataset([fake], tmp_path, image_size=112)[0]
