"""Robustness passes (``--perturb``) on the tiny model: the clean row is the ordinary evaluation, the same seed
gives the same rows, the perturbed inputs really differ, resize scores at the resized size, the report's
robustness plots render, and every evaluation script, benchmark_sets.py, predict.py and compare_runs.py take
the conditions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from browser import assert_rendered, needs_chromium
from qwen_forensics.data import ForgeryDataset, Perturbation, Task2ImageDataset, load_index, parse_perturbations
from qwen_forensics.data.collate import SIZE_KEY, TRUTH_KEY
from qwen_forensics.data.dataset import ImageFileDataset
from qwen_forensics.evaluation import REPORT_NAME, ROBUSTNESS_CSV, CheckpointRunner, SplitEvaluator
from qwen_forensics.training import make_accelerator
from scripts import csv_rows, demo_index, run_script
from test_eval_scripts import SCORES, eval_sets

pytestmark = pytest.mark.usefixtures("single_thread")

CONDITIONS = ["jpeg:100,50", "resize:0.5"]
IDENTITY = ("set", "perturbation", "level", "seconds", "images_per_s")


@pytest.fixture(scope="module")
def ckpts(task1_ckpt, task2_adapter, task3_run) -> dict:
    return {"task1": task1_ckpt, "task2": task2_adapter, "task3": task3_run}


def _rows(path: Path) -> list[dict]:
    return csv_rows(path)


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in IDENTITY}


@pytest.fixture(scope="module")
def lora_eval_runs(tiny_root, ckpts, tmp_path_factory) -> dict:
    """lora_eval with the conditions twice (same seed) and once without them."""
    runs = {}
    for name, extra in (("plain", []), ("first", ["--perturb", *CONDITIONS]), ("again", ["--perturb", *CONDITIONS])):
        out = tmp_path_factory.mktemp(f"robust_{name}")
        argv = ["--root", str(tiny_root)]
        for value in eval_sets("lora_eval", ckpts, out, demo_index(tiny_root, "test"), demo_index(tiny_root, "val")):
            argv += ["--set", value]
        printed = run_script("lora_eval", None, argv=[*argv, *extra, "--perturb-seed", "7"])
        runs[name] = {"out": out, "printed": printed, "csv": csv_rows(out / "metrics.csv")[-1]}
    return runs


def test_clean_row_equals_the_ordinary_evaluation_exactly(lora_eval_runs):
    rows = _rows(lora_eval_runs["first"]["out"] / ROBUSTNESS_CSV)
    assert [(r["perturbation"], r["level"]) for r in rows] == [("none", ""), ("jpeg", "100"), ("jpeg", "50"),
                                                             ("resize", "0.5")]
    plain = lora_eval_runs["plain"]["csv"]
    clean = rows[0]
    shared = [k for k in _metrics(clean) if k in plain]
    assert {"auroc", "pixel_f1", "pixel_iou", "score", "imdlbenco_pixel_f1"} <= set(shared)
    assert {k: clean[k] for k in shared} == {k: plain[k] for k in shared}
    assert not (lora_eval_runs["plain"]["out"] / ROBUSTNESS_CSV).exists()


def test_same_seed_gives_identical_rows(lora_eval_runs):
    first = _rows(lora_eval_runs["first"]["out"] / ROBUSTNESS_CSV)
    again = _rows(lora_eval_runs["again"]["out"] / ROBUSTNESS_CSV)
    assert [_metrics(r) for r in first] == [_metrics(r) for r in again]
    assert all(float(r["seconds"]) > 0 and float(r["images_per_s"]) > 0 for r in first)


def test_report_has_the_robustness_section(lora_eval_runs):
    page = (lora_eval_runs["first"]["out"] / REPORT_NAME).read_text(encoding="utf-8")
    assert "<h2>Robustness</h2>" in page
    assert page.count('alt="robustness ') == 4  # auroc, pixel_f1, pixel_iou, score
    assert "Robustness" not in (lora_eval_runs["plain"]["out"] / REPORT_NAME).read_text(encoding="utf-8")


@needs_chromium
def test_robustness_plots_render_in_chromium(lora_eval_runs, tmp_path):
    """The section's plots on top of a page (compare_runs --robustness shows the report's section alone)."""
    robustness = lora_eval_runs["first"]["out"] / ROBUSTNESS_CSV
    run_script("compare_runs", None, argv=["--robustness", str(robustness), "--out", str(tmp_path)])
    assert_rendered(tmp_path, tmp_path / "compare.html", ["Robustness"], min_blue=150)


def test_jpeg_100_and_50_inputs_differ_and_resize_scores_at_the_resized_size(tiny_root):
    records = load_index(demo_index(tiny_root, "test"))
    fake = next(i for i, r in enumerate(records) if r.label == 1)
    data_root = tiny_root / "data"

    def item(spec: str | None):
        perturbation = parse_perturbations([spec])[0] if spec else None
        return ForgeryDataset(records, data_root, 56, with_mask=False, with_truth=True,
                              perturbation=perturbation, perturb_seed=3)[fake]

    clean, q100, q50, half = item(None), item("jpeg:100"), item("jpeg:50"), item("resize:0.5")
    pixels = {name: np.asarray(it["image"], dtype=np.int16) for name, it in
              (("clean", clean), ("q100", q100), ("q50", q50))}
    change_100 = np.abs(pixels["q100"] - pixels["clean"]).mean()
    change_50 = np.abs(pixels["q50"] - pixels["clean"]).mean()
    assert 0 < change_100 < change_50
    np.testing.assert_array_equal(q50[TRUTH_KEY], clean[TRUTH_KEY])
    h, w = clean[SIZE_KEY]
    assert half[SIZE_KEY] == (round(h / 2), round(w / 2)) and half[TRUTH_KEY].shape == (round(h / 2), round(w / 2))
    assert half["letterbox"].orig_h == round(h / 2)
    # Nearest neighbour keeps the mask binary and about its area fraction.
    assert abs(half[TRUTH_KEY].mean() - clean[TRUTH_KEY].mean()) < 0.05


def test_task2_and_predict_datasets_take_the_perturbation(tiny_root):
    records = load_index(demo_index(tiny_root, "test"))[:2]
    data_root = tiny_root / "data"
    blur = Perturbation("blur", 7)
    path = data_root / records[0].image_path
    # image_size None: the processor gets the image at its own size, so the blur is seen as it was applied.
    blurred = Task2ImageDataset.from_records(records, data_root, None, blur, 0)[0]["image"]
    with Image.open(path) as img:
        original = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(blurred), cv2.GaussianBlur(original, (7, 7), 0))
    assert not np.array_equal(np.asarray(blurred), original)
    files = ImageFileDataset([path], 56, 64, Perturbation("resize", 0.5))[0]
    with Image.open(path) as img:
        assert files[SIZE_KEY] == (round(img.height / 2), round(img.width / 2))


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in SCORES if s != "lora_eval"])
def test_each_lm_evaluation_writes_robustness_rows(tiny_root, ckpts, tmp_path, script):
    sets = eval_sets(script, ckpts, tmp_path, demo_index(tiny_root, "test"), None)
    run_script(script, tiny_root, *sets, "perturb=[\"noise:23\"]")
    rows = _rows(tmp_path / ROBUSTNESS_CSV)
    assert [(r["perturbation"], r["level"]) for r in rows] == [("none", ""), ("noise", "23")]
    plain = csv_rows(tmp_path / "metrics.csv")[-1]
    auroc = "lm_auroc" if script == "hybrid_eval" else "auroc"
    assert rows[0][auroc] == plain[auroc] and math.isfinite(float(rows[1][auroc]))
    assert "<h2>Robustness</h2>" in (tmp_path / REPORT_NAME).read_text(encoding="utf-8")


def _count_loads(monkeypatch) -> list:
    """Every CheckpointRunner.load call (benchmark_sets.py and predict.py load their model through it)."""
    loads = []
    original = CheckpointRunner.load

    def load(self):
        loads.append(1)
        original(self)
    monkeypatch.setattr(CheckpointRunner, "load", load)
    return loads


def test_benchmark_sets_takes_the_conditions(tiny_root, task1_ckpt, tmp_path, monkeypatch):
    loads = _count_loads(monkeypatch)
    out = tmp_path / "bench"
    run_script("benchmark_sets", None, argv=["--ckpt", str(task1_ckpt), "--set", f"a={demo_index(tiny_root, 'test')}",
                                             "--set", f"b={demo_index(tiny_root, 'val')}",
                                             "--data-root", str(tiny_root / "data"), "--out", str(out),
                                             "--num-workers", "0", "--batch-size", "8", "--perturb", "blur:7"])
    rows = _rows(out / ROBUSTNESS_CSV)
    assert [(r["set"], r["perturbation"]) for r in rows] == [("a", "none"), ("a", "blur"), ("b", "none"),
                                                             ("b", "blur")]
    table = {r["set"]: r for r in csv_rows(out / "benchmark.csv")}
    assert rows[0]["auroc"] == table["a"]["auroc"] and rows[2]["pixel_iou"] == table["b"]["pixel_iou"]
    assert "<h2>Robustness</h2>" in (out / REPORT_NAME).read_text(encoding="utf-8")
    assert len(loads) == 1, "the model loads once for both sets and every condition"


def test_predict_rows_gain_perturbation_and_level(tiny_root, task1_ckpt, tmp_path, monkeypatch):
    image = tiny_root / "data" / load_index(demo_index(tiny_root, "test"))[0].image_path
    plain, out = tmp_path / "plain", tmp_path / "perturbed"
    run_script("predict", None, argv=["--ckpt", str(task1_ckpt), str(image), "--out", str(plain),
                                      "--num-workers", "0"])
    loads = _count_loads(monkeypatch)
    run_script("predict", None, argv=["--ckpt", str(task1_ckpt), str(image), "--out", str(out), "--num-workers", "0",
                                      "--perturb", "jpeg:50", "resize:0.5"])
    assert len(loads) == 1, "one model load for the three passes"
    rows = json.loads((out / "predictions.json").read_text())
    assert [(r["perturbation"], r["level"]) for r in rows] == [("none", ""), ("jpeg", "50"), ("resize", "0.5")]
    assert rows[0]["p_fake"] == json.loads((plain / "predictions.json").read_text())[0]["p_fake"]
    assert rows[2]["height"] == round(rows[0]["height"] / 2)
    assert len({Path(r["heatmap_png"]).name for r in rows}) == 3
    with (out / "predictions.csv").open(newline="") as f:
        assert list(csv.DictReader(f))[1]["perturbation"] == "jpeg"


def test_compare_runs_overlays_two_robustness_tables(lora_eval_runs, tmp_path):
    a = lora_eval_runs["first"]["out"] / ROBUSTNESS_CSV
    b = lora_eval_runs["again"]["out"] / ROBUSTNESS_CSV
    printed = run_script("compare_runs", None, argv=["--robustness", str(a), str(b), "--out", str(tmp_path)])
    page = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "Robustness" in page and page.count('alt="robustness ') == 4
    assert str(tmp_path / "compare.html") in printed


def test_a_config_with_a_bad_perturbation_stops_before_any_model_loads(tiny_root, ckpts, tmp_path):
    sets = eval_sets("lora_eval", ckpts, tmp_path, demo_index(tiny_root, "test"), None)
    with pytest.raises(SystemExit, match="blur:4: the Gaussian kernel size is an odd integer"):
        run_script("lora_eval", tiny_root, *sets, "perturb=[\"blur:4\"]")
    assert not (tmp_path / "metrics.csv").exists()


def test_next_conditions_loader_opens_while_the_pass_before_runs(tiny_root, tmp_path):
    built = []

    def dataset(records, perturbation=None):
        built.append(perturbation and perturbation.name)
        return ForgeryDataset(records, tiny_root / "data", 56, with_mask=False, perturbation=perturbation)

    def predict(loader, num_records):
        opened = list(built)
        positions = [p for batch in loader for p in batch["position"].tolist()]
        assert positions == list(range(num_records))
        return opened

    evaluator = SplitEvaluator(make_accelerator(1), str(tiny_root / "data"), "fail", tmp_path, 4, 0, dataset=dataset,
                               collate=lambda items: {"position": torch.tensor([it["position"] for it in items])})
    evaluator.validate("test", str(demo_index(tiny_root, "test")))
    tags = evaluator.perturb("test", parse_perturbations(["blur:7", "jpeg:50"]))
    assert tags == ["test@blur:7", "test@jpeg:50"]
    assert evaluator.evaluate("test", predict).predictions == [None, "blur:7"]
    assert evaluator.evaluate(tags[0], predict).predictions == [None, "blur:7", "jpeg:50"]
    assert evaluator.evaluate(tags[1], predict).predictions == [None, "blur:7", "jpeg:50"]
