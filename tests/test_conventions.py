"""The pixel-metric conventions of the evaluation CSVs (README, "Benchmark tables"), through the whole chain
the scripts run: mask files read in their format, both binarisations decoded by the dataset (ours and
IMDLBenCo's), the loop's counts (``PixelCounter``) and ``score_heads``.

A hand-computed case separates them: a large mask and a tiny one (per-image and pooled F1 far apart),
probabilities exactly at the threshold (counted by ours, not by IMDLBenCo's strict ``>``), a mask whose
grey level is in our ground truth but not in IMDLBenCo's, and an authentic image (in IMDLBenCo's average, at
0). Then IMDLBenCo's own dataset and evaluators, run in their own virtual environment on the same maps,
give what our IMDLBenCo columns say."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from qwen_forensics.data.collate import SIZE_KEY, TRUTH_KEY, truth_of
from qwen_forensics.data.dataset import ForgeryDataset
from qwen_forensics.data.geometry import letterbox_geometry, unletterbox
from qwen_forensics.data.masks import load_binary_mask
from qwen_forensics.data.records import load_index
from qwen_forensics.evaluation import scoring
from qwen_forensics.evaluation.metrics import twice_mann_whitney_u
from qwen_forensics.evaluation.scoring import PixelCounter, score_heads
from scripts import IMDLBENCO_PYTHON, needs_imdlbenco



def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def scored(records, heatmaps: np.ndarray, p_fake: list[float], image_size: int, threshold: float = 0.5):
    """The evaluation's own path: the dataset's items (ground truths decoded as in the loader workers),
    collated, counted on the heatmaps as the loop does, then scored with IMDLBenCo's columns."""
    dataset = ForgeryDataset(records, "/", image_size, with_mask=False, with_truth=True)
    items = [dataset[i] for i in range(len(records))]
    counts = PixelCounter(image_size, threshold)(torch.from_numpy(heatmaps), truth_of(items))
    return score_heads(records, np.array(p_fake), counts.numpy(), pixel_threshold=threshold, imdlbenco=True)


def hand_case(root: Path) -> tuple[list, np.ndarray]:
    """Three 10 x 10 images in a Tp/ + Gt/ + Au/ folder and their 10 x 10 probability maps (the whole canvas
    at image_size 10, so the maps reach the images unchanged):

    - A, large mask: white columns 0-3 and grey 100 in column 4 (in our ground truth, 100/255 >= 0.2 x p99;
      not in IMDLBenCo's, mean 100 <= 127.5). Probabilities 0.9 on columns 0-3, exactly 0.5 on columns 4
      and 5, 0.1 on the rest.
    - B, tiny mask: the one pixel (0, 0), at probability 0.3; 0.9 on nine pixels of the last row, 0.1 elsewhere.
    - C, authentic (Au/): 0.7 on five pixels, 0.2 elsewhere.
    """
    mask_a = np.zeros((10, 10, 3), np.uint8)
    mask_a[:, :4] = 255
    mask_a[:, 4] = 100
    mask_b = np.zeros((10, 10), np.uint8)
    mask_b[0, 0] = 255
    for name in ("a", "b"):
        save(root / "Tp" / f"{name}.png", np.full((10, 10, 3), 120, np.uint8))
    save(root / "Au" / "c.png", np.full((10, 10, 3), 120, np.uint8))
    save(root / "Gt" / "a_gt.png", mask_a)
    save(root / "Gt" / "b_mask.png", mask_b)
    heat = np.full((3, 10, 10), 0.1, np.float32)
    heat[0, :, :4] = 0.9
    heat[0, :, 4:6] = 0.5
    heat[1, 0, 0] = 0.3
    heat[1, 9, :9] = 0.9
    heat[2] = 0.2
    heat[2, 3, 2:7] = 0.7
    return load_index(root), heat


def test_each_convention_on_a_hand_computed_case(tmp_path):
    records, heat = hand_case(tmp_path)
    assert [(Path(r.image_path).name, r.label) for r in records] == [("a.png", 1), ("b.png", 1), ("c.png", 0)]
    metrics, rows = scored(records, heat, [0.8, 0.6, 0.3], image_size=10)
    a, b, c = rows
    # A: ours (>= 0.5) predicts columns 0-5 against columns 0-4: TP 50, FP 10, FN 0.
    assert (a["tp"], a["fp"], a["fn"]) == (50, 10, 0)
    assert (a["pixel_f1"], a["pixel_iou"]) == (pytest.approx(100 / 110), pytest.approx(50 / 60))
    # IMDLBenCo (> 0.5) predicts columns 0-3 against its own columns 0-3: perfect.
    assert (a["imdlbenco_pixel_f1"], a["imdlbenco_pixel_iou"]) == (1.0, 1.0)
    # Pixel AUROC, ties half: 40 positives at 0.9 above all 50 negatives, 10 at 0.5 above 40 and tied with 10.
    assert a["pixel_auroc"] == pytest.approx((40 * 50 + 10 * (40 + 0.5 * 10)) / (50 * 50)) == 0.98
    # B: nine false positives and the one forged pixel missed; its AUROC: 0.3 above 90 of 99 negatives.
    assert (b["tp"], b["fp"], b["fn"], b["pixel_f1"], b["imdlbenco_pixel_f1"]) == (0, 9, 1, 0.0, 0.0)
    assert b["pixel_auroc"] == pytest.approx(90 / 99)
    assert (c["positive_fraction"], c["imdlbenco_pixel_f1"], c["imdlbenco_pixel_iou"]) == (0.05, 0.0, 0.0)
    for row, rec, h in zip(rows[:2], records[:2], heat[:2]):   # the AUROC is sklearn's on the full map
        assert row["pixel_auroc"] == pytest.approx(roc_auc_score(load_binary_mask(rec, "/").ravel(), h.ravel()))

    expected = {
        "pixel_f1": (100 / 110 + 0) / 2, "pixel_iou": (50 / 60 + 0) / 2,          # per image, over the fakes
        "pixel_f1_pooled": 2 * 50 / (2 * 50 + 19 + 1), "pixel_iou_pooled": 50 / (50 + 19 + 1),  # pooled
        "pixel_auroc": (0.98 + 90 / 99) / 2,
        "imdlbenco_pixel_f1": 1 / 3, "imdlbenco_pixel_iou": 1 / 3,               # every image, authentic at 0
        "false_alarm": 0.05, "auroc": 1.0,
    }
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert (metrics["cdice"], metrics["ciou"]) == (metrics["pixel_f1_pooled"], metrics["pixel_iou_pooled"])
    assert metrics["pixel_f1"] == pytest.approx(0.454545, abs=1e-6) and metrics["pixel_f1_pooled"] == pytest.approx(
        0.833333, abs=1e-6), "per image and pooled far apart"
    assert metrics["score"] == pytest.approx((1.0 + 5 / 11 + 5 / 12) / 3)


IMDLBENCO_SCRIPT = '''
import json, sys
import numpy as np, torch
from IMDLBenCo.datasets import JsonDataset
from IMDLBenCo.evaluation import PixelF1, PixelIOU

index, maps, side, threshold = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = JsonDataset(index, is_padding=True, output_size=(side, side))
f1, iou = PixelF1(threshold=threshold), PixelIOU(threshold=threshold)
out = {"f1": [], "iou": []}
for i in range(len(data)):
    item = data[i]
    prob = np.zeros((side, side), np.float32)
    full = maps[f"map{i}"]
    prob[: full.shape[0], : full.shape[1]] = full
    predict, mask, shape = torch.from_numpy(prob)[None, None], item["mask"][None], item["shape_mask"][None]
    out["f1"].append(float(f1.batch_update(predict, mask, shape)[0]))
    out["iou"].append(float(iou.batch_update(predict, mask, shape)[0]))
print(json.dumps(out))
'''


@needs_imdlbenco
def test_imdlbenco_columns_equal_imdlbencos_own_dataset_and_evaluators(tmp_path):
    """Images of mixed sizes as IMDLBenCo pairs: soft RGB masks (its RGB-mean binarisation is not ours), a
    fake whose mask is empty by its rule but not by ours, authentic images; random patch maps with cells
    exactly at the threshold. IMDLBenCo's JsonDataset (padding, so it scores at the original size) and its
    PixelF1 / PixelIOU on our full-resolution maps give our per-image values and their mean over all images."""
    rng = np.random.default_rng(3)
    sizes = [(37, 50), (50, 23), (20, 20), (44, 31), (30, 48), (25, 40)]
    kinds = ["fake", "fake", "real", "fake", "faint", "real"]
    pairs = []
    for i, ((h, w), kind) in enumerate(zip(sizes, kinds)):
        image = tmp_path / f"img{i}.png"
        save(image, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if kind == "real":
            pairs.append([str(image), "Negative"])
            continue
        mask = np.zeros((h, w, 3), np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        region = (slice(top, top + h // 2), slice(left, left + w // 2))
        mask[region] = rng.integers(40, 256, (h // 2, w // 2, 3)) if kind == "fake" else 90
        save(tmp_path / f"mask{i}.png", mask)
        pairs.append([str(image), str(tmp_path / f"mask{i}.png")])
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    records = load_index(tmp_path / "pairs.json")
    image_size, grid = 56, 8
    heat = rng.random((len(sizes), grid, grid)).astype(np.float32)
    heat[:, :3, :3] = 0.5
    metrics, rows = scored(records, heat, rng.random(len(sizes)).tolist(), image_size)
    assert rows[4]["imdlbenco_pixel_f1"] == 0.0 and not rows[4]["empty_mask"], "the faint mask: only ours keeps it"
    full = {f"map{i}": unletterbox(heat[i], letterbox_geometry(h, w, image_size)) for i, (h, w) in enumerate(sizes)}
    np.savez(tmp_path / "maps.npz", **full)
    (tmp_path / "imdlbenco_side.py").write_text(IMDLBENCO_SCRIPT)
    done = subprocess.run([str(IMDLBENCO_PYTHON), str(tmp_path / "imdlbenco_side.py"), str(tmp_path / "pairs.json"),
                           str(tmp_path / "maps.npz"), "64", "0.5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["imdlbenco_pixel_f1"] for r in rows] == pytest.approx(theirs["f1"], abs=1e-6)
    assert [r["imdlbenco_pixel_iou"] for r in rows] == pytest.approx(theirs["iou"], abs=1e-6)
    assert metrics["imdlbenco_pixel_f1"] == pytest.approx(np.mean(theirs["f1"]), abs=1e-6)
    assert metrics["imdlbenco_pixel_iou"] == pytest.approx(np.mean(theirs["iou"]), abs=1e-6)
    assert sum(f > 0 for f in theirs["f1"]) == 3, "three fakes with a mask by IMDLBenCo's rule, scored above 0"


def test_pixel_auroc_is_sklearns_with_ties_and_in_chunks(monkeypatch):
    """Twice the Mann-Whitney U, from integer ranks, is sklearn's AUROC (ties count half), row by row, also when
    the counter ranks a few rows at a time."""
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(np.round(rng.random((5, 400)), 1).astype(np.float32))  # many ties
    labels = torch.from_numpy(rng.random((5, 400)) < 0.3)
    u2 = twice_mann_whitney_u(scores, labels)
    for row in range(5):
        positives = int(labels[row].sum())
        auc = float(u2[row]) / (2 * positives * (400 - positives))
        assert auc == pytest.approx(roc_auc_score(labels[row].numpy(), scores[row].numpy()), abs=1e-12)
    maps = torch.from_numpy(np.round(rng.random((4, 20, 20)), 2).astype(np.float32))
    batch = {TRUTH_KEY: [torch.from_numpy(rng.random((20, 20)) < 0.4) for _ in range(4)],
             SIZE_KEY: torch.tensor([[20, 20]] * 4)}
    whole = PixelCounter(20, 0.5)(maps, batch)
    monkeypatch.setattr(scoring, "RANK_CHUNK", 800)   # two images per sort
    assert torch.equal(PixelCounter(20, 0.5)(maps, batch), whole)
    assert torch.equal(whole[:, 5], twice_mann_whitney_u(maps.flatten(1), torch.stack(batch[TRUTH_KEY]).flatten(1)))
