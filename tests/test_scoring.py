"""``evaluation.scoring``: pixel scoring inside the loop (``PixelCounter``, counts only, images of one size
batched) gives exactly what scoring each full-resolution map on the host gives (``unletterbox`` +
``PixelMetricAccumulator.update``): every per-image row and every metric, on random maps of mixed
sizes and on the tiny model's own heatmaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from qwen_forensics.data import ForgeryDataset, ImageBatchCollator, MaskRule, load_index
from qwen_forensics.data.collate import SIZE_KEY, TRUTH_KEY
from qwen_forensics.data.geometry import letterbox_geometry, unletterbox
from qwen_forensics.data.records import Record
from qwen_forensics.evaluation import PixelCounter, predict_heads, score_heads
from qwen_forensics.evaluation.metrics import PixelMetricAccumulator, combined_score, image_report
from qwen_forensics.evaluation.scoring import HeatmapSource
from qwen_forensics.checkpoints import attach_task1_checkpoint, checkpoint_image_size
from qwen_forensics.model import load_processor, load_vision_tower
from qwen_forensics.training import make_accelerator
from scripts import demo_index

SIZES = [(240, 320), (720, 1280), (317, 211), (240, 320), (1080, 1920), (64, 48), (720, 1280), (99, 101)]


def reference(records, p_fake, full_maps, truths, threshold, tuned=None):
    """Today's path, written out: each map at full size, thresholded and counted on the host."""
    report = image_report(np.array([r.label for r in records]), p_fake, tuned_threshold=tuned)
    pixels = PixelMetricAccumulator(threshold)
    rows = []
    for rec, p, prob, gt in zip(records, p_fake, full_maps, truths):
        rows.append({"image_path": rec.image_path, "label": rec.label, "p_fake": float(p),
                     **pixels.update(prob, gt, rec.label), "mask_area": float(gt.mean())})
    report.update(pixels.compute())
    report["score"] = combined_score(report["auroc"], report["pixel_f1"], report["pixel_iou"])
    return report, rows


def assert_same(got, want):
    (metrics, rows), (want_metrics, want_rows) = got, want
    assert len(rows) == len(want_rows)
    for row, expected in zip(rows, want_rows):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
            else:
                assert row[key] == value, key
    assert metrics.keys() == want_metrics.keys()
    for key, value in want_metrics.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(metrics[key]), key
        elif isinstance(value, float):
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert metrics[key] == value, key


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_counts_in_the_loop_equal_full_maps_on_random_maps_of_mixed_sizes(threshold):
    rng = np.random.default_rng(7)
    image_size, res = 112, 8
    heat = rng.random((len(SIZES), res, res)).astype(np.float32)
    heat[2] = threshold  # exactly at the threshold everywhere: positive, on both paths
    labels = [1, 0, 1, 1, 0, 1, 1, 0]
    truths = []
    for (h, w), label in zip(SIZES, labels):
        gt = rng.random((h, w)) < 0.3 if label else np.zeros((h, w), dtype=bool)
        truths.append(gt)
    truths[3][:] = False  # a fake whose mask is empty
    records = [Record(f"img_{i}.jpg", None, None, label, i) for i, label in enumerate(labels)]
    p_fake = rng.random(len(SIZES)).astype(np.float32)
    full = [unletterbox(heat[i], letterbox_geometry(h, w, image_size)) for i, (h, w) in enumerate(SIZES)]

    counter = PixelCounter(image_size, threshold)
    batches = [slice(0, 3), slice(3, 8)]
    counts = [counter(torch.from_numpy(heat[b]), {
        TRUTH_KEY: [torch.from_numpy(truths[i]) if labels[i] else None for i in range(b.start, b.stop)],
        SIZE_KEY: torch.tensor(SIZES[b])}) for b in batches]
    got = score_heads(records, p_fake, torch.cat(counts).numpy(), pixel_threshold=threshold, tuned_threshold=0.4)
    want = reference(records, p_fake, full, truths, threshold, tuned=0.4)
    assert_same(got, want)
    assert got[0]["num_fake_empty_mask"] == 1 and got[1][2]["positive_fraction"] == 1.0


@pytest.mark.usefixtures("single_thread")
def test_counts_in_the_loop_equal_full_maps_on_the_tiny_models_heatmaps(tiny_root, task1_ckpt):
    """The tiny Task 1 checkpoint over the demo test index (720p and 1080p frames among others): the
    loop's counts against the masks the loader workers decoded equal the host path on the same maps."""
    image_size = checkpoint_image_size(task1_ckpt)
    records = load_index(demo_index(tiny_root, "test"))
    data_root = tiny_root / "data"
    processor = load_processor(tiny_root / "Qwen2.5-VL-7B-Instruct", image_size)
    model = attach_task1_checkpoint(load_vision_tower(tiny_root / "Qwen2.5-VL-7B-Instruct", dtype="float32"), task1_ckpt)
    loader = DataLoader(ForgeryDataset(records, data_root, image_size, with_mask=False, with_truth=True), batch_size=5,
                        collate_fn=ImageBatchCollator(processor))
    preds = predict_heads(model, loader, make_accelerator(1), "fp32", len(records), PixelCounter(image_size, 0.5))
    got = score_heads(records, preds.p_fake, preds.counts)
    source = HeatmapSource(records, preds.heatmaps, data_root, MaskRule(), image_size)
    truths, full = zip(*(source.full_size(i) for i in range(len(records))))
    assert_same(got, reference(records, preds.p_fake, full, truths, 0.5))
    assert {r["label"] for r in got[1]} == {0, 1} and any(r.get("tp", 0) > 0 or r.get("fp", 0) > 0 for r in got[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_the_gpu_at_7b_shape_in_bf16(capsys):
    """The 7B-shaped vision tower (random bf16 weights) with random heads, on the user's frame sizes: the
    loop's counts on the GPU against the host path on the same heatmaps. A pixel can only change sides
    where the two devices' interpolation rounds differently right at the threshold; the largest
    probability difference and the count differences are printed (quoted in the closing note)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from qwen_forensics.demo.shapes import QWEN25_VL_7B
    from qwen_forensics.model import ForensicHeads, ForensicViT
    from transformers import Qwen2_5_VLVisionConfig

    torch.manual_seed(0)
    config = Qwen2_5_VLVisionConfig(**QWEN25_VL_7B["vision"])
    config._attn_implementation = "sdpa"
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config).to("cuda", torch.bfloat16).eval()
    model = ForensicViT(tower, [7, 15, 23, 31], ForensicHeads.from_vision_config(config, [7, 15, 23, 31]).cuda())
    sizes = [(720, 1280), (1080, 1920), (360, 480), (480, 854)] * 4
    image_size, grid = 448, 448 // 14
    pixels = torch.randn(len(sizes) * grid * grid, 3 * 2 * 14 * 14, device="cuda", dtype=torch.bfloat16)
    thw = torch.tensor([[1, grid, grid]] * len(sizes))
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        heat = torch.sigmoid(model(pixels, thw)["heatmap_logit"].float())
    rng = np.random.default_rng(1)
    truths = [torch.from_numpy(rng.random(s) < 0.2) if k % 2 else None for k, s in enumerate(sizes)]
    batch = {TRUTH_KEY: [t.cuda() if t is not None else None for t in truths], SIZE_KEY: torch.tensor(sizes)}
    threshold = float(heat.median())
    on_gpu = PixelCounter(image_size, threshold)(heat, batch).cpu()
    on_cpu = PixelCounter(image_size, threshold)(heat.cpu(), {**batch, TRUTH_KEY: truths})
    largest = max(float((unletterbox(heat[i], letterbox_geometry(h, w, image_size)).cpu()
                         - unletterbox(heat[i].cpu(), letterbox_geometry(h, w, image_size))).abs().max())
                  for i, (h, w) in enumerate(sizes))
    differing = int((on_gpu != on_cpu).any(dim=1).sum())
    with capsys.disabled():
        print(f"\n[scoring] GPU vs host at 7B shape, bf16, {len(sizes)} images: largest probability difference "
              f"{largest:.3g}, images whose counts differ {differing}, largest count difference "
              f"{int((on_gpu - on_cpu).abs().max())} pixels of {int(on_cpu[:, 4].max())}")
    assert largest < 1e-5
    assert int((on_gpu - on_cpu).abs().max()) <= 0.0001 * int(on_cpu[:, 4].max())
