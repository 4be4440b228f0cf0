"""report.html (breakdown tables, plots, page) and compare_runs.py, checked against independent
recomputation and, where Chromium is installed (CI installs it in .ci/setup), in a real browser."""
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score

from browser import Page, assert_rendered, assert_self_contained, needs_chromium
from qwen_forensics.data.methods import manipulation_method
from qwen_forensics.evaluation.metrics import PixelMetricAccumulator
from qwen_forensics.files import append_csv_row
from qwen_forensics.report.page import (HEADINGS, NO_TUNED, Example, GalleryItem, format_value, report_tables,
                                        row_caption, write_report)
from qwen_forensics.report.tables import (EMPTY_BUCKET, area_bucket_labels, confusion_counts, mask_area_table,
                                          method_table, select_examples, select_false_alarms, select_gallery)
from scripts import SHARED_INDEX, load_script, needs_real_index

REPO = Path(__file__).resolve().parents[1]
COMPARE = REPO / "Qwen_code" / "compare_runs.py"


# --- manipulation_method -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, group", [
    ("trainingset2/image/1__7283059e2ee6ec302df2936c7d23313b__731b7083e9932d276cb8a1584a0513e2__frame00067.jpg", "1"),
    ("trainingset2/image/7__2ac43aa43bf473f9a9c09b4b608619d3__f8fc74336ba9f2bd308c2d9186d3c836__frame00015.jpg", "7"),
    ("testset2/image/10__2570c919f5ef1d7091f0f66d54dac974__e99ff585cc61531d58b49cd781bac25a__frame00001.jpg", "10"),
    ("15__89ccd46c6f200621c6cdea607f8cd15a__c854203211a467e85bee0eb3b5e29325__frame00131.jpg", "15"),
    ("trainingset2/image/image__19__aba83642ef85fbf03be9dda3c4f99edc__frame00001.jpg", "real"),
    ("trainingset2\\image\\image__19__aba83642ef85fbf03be9dda3c4f99edc__frame00001.jpg", "other"),  # not a POSIX folder
])
def test_manipulation_method_on_real_forgerynet_names(path, group):
    assert manipulation_method(path) == group


@pytest.mark.parametrize("name", [
    "0__aaaa__bbbb__frame00001.jpg",          # method 0 does not exist
    "16__aaaa__bbbb__frame00001.jpg",         # nor 16
    "03__aaaa__bbbb__frame00001.jpg",         # leading zero: not ForgeryNet's spelling
    "3__aaaa__frame00001.jpg",                # one id only
    "3__aaaa__bbbb.jpg",                      # no frame
    "3__aaaa__bbbb__frameX.jpg",
    "image__x__aaaa__frame00001.jpg",         # k not a number
    "image__1__aaaa__bbbb__frame00001.jpg",   # a real with two ids
    "3__aa_a__bbbb__frame00001.jpg",
    "photo.jpg", "", "image", "frame00001.jpg",
    "1__aaaa__bbbb__frame00001.jpg/inside.jpg",
])
def test_manipulation_method_odd_names_are_other(name):
    assert manipulation_method(name) == "other"


def test_manipulation_method_accepts_other_extensions_and_case():
    assert manipulation_method("x/12__AbC__d3f__frame7.PNG") == "12"
    assert manipulation_method("IMAGE__4__ff__frame00002.jpeg") == "real"


@needs_real_index
def test_manipulation_method_on_the_whole_real_index():
    records = json.loads((SHARED_INDEX / "train_idx.json").read_text())
    groups = Counter(manipulation_method(r["image_path"]) for r in records)
    assert groups["real"] == 4250 and groups["other"] == 0
    assert (groups["1"], groups["7"], groups["10"], groups["13"]) == (335, 105, 146, 376)
    assert sorted(int(g) for g in groups if g != "real") == list(range(1, 16))
    assert all((manipulation_method(r["image_path"]) == "real") == (r["label"] == 0) for r in records)


# --- synthetic predictions -----------------------------------------------------------------------------------------


def fake_name(method: int, i: int) -> str:
    return f"testset2/image/{method}__{i:032x}__{i + 1:032x}__frame{i:05d}.jpg"


def synthetic_rows(seed: int = 0) -> tuple[list[dict], list[str]]:
    """Rows as score_heads writes them (plus a Task 3 style second score and mask_area), and each
    row's group as the test assigned it."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    plan = [(1, 6), (3, 4), (7, 5), (12, 3), (15, 7)]
    for method, count in plan:
        for _ in range(count):
            i = len(rows)
            iou = float(rng.random())
            rows.append({"image_path": fake_name(method, i), "label": 1,
                         "p_fake": float(np.clip(0.05 * method + rng.normal(0.45, 0.2), 0, 1)),
                         "p_fake_lm": float(rng.random()), "positive_fraction": 0.3, "empty_mask": False,
                         "tp": 1, "fp": 1, "fn": 1, "pixel_f1": 2 * iou / (1 + iou), "pixel_iou": iou,
                         "mask_area": float(rng.uniform(0.001, 0.6))})
            groups.append(str(method))
    for k in range(20):
        rows.append({"image_path": f"testset2/image/image__{k % 4}__{k:032x}__frame00001.jpg", "label": 0,
                     "p_fake": float(np.clip(rng.normal(0.35, 0.2), 0, 1)), "p_fake_lm": float(rng.random()),
                     "positive_fraction": 0.1, "mask_area": 0.0})
        groups.append("real")
    # A fake whose binarised mask is empty: counted, never averaged into pixel metrics.
    rows.append({**rows[0], "image_path": fake_name(3, 99), "empty_mask": True, "pixel_f1": 0.0, "pixel_iou": 0.0,
                 "mask_area": 0.0, "p_fake": 0.9})
    groups.append("3")
    for name, label in (("elsewhere/img_0001.jpg", 1), ("elsewhere/img_0002.jpg", 0), ("odd.png", 1)):
        extra = {"empty_mask": False, "pixel_f1": 0.5, "pixel_iou": 1 / 3, "mask_area": 0.2} if label else {}
        rows.append({"image_path": name, "label": label, "p_fake": float(rng.random()), "p_fake_lm": 0.5, **extra})
        groups.append("other")
    return rows, groups


def expected_method_table(rows: list[dict], groups: list[str], score: str, tuned: float) -> dict[str, dict]:
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r[score] for r in rows])
    groups_arr = np.array(groups)
    reals_all = scores[labels == 0]
    out = {}
    for group in set(groups):
        sel = groups_arr == group
        fakes, reals = scores[sel & (labels == 1)], scores[sel & (labels == 0)]
        pix = [r for r, g in zip(rows, groups) if g == group and r["label"] == 1 and not r["empty_mask"]]
        entry = {"count": int(sel.sum()), "num_fake": len(fakes), "num_real": len(reals),
                 "mean_p_fake": scores[sel].mean(),
                 "recall@0.5": np.mean(fakes >= 0.5) if len(fakes) else math.nan,
                 "fpr@0.5": np.mean(reals >= 0.5) if len(reals) else math.nan,
                 "recall@tuned": np.mean(fakes >= tuned) if len(fakes) else math.nan,
                 "fpr@tuned": np.mean(reals >= tuned) if len(reals) else math.nan,
                 "auroc": roc_auc_score(np.r_[np.ones(len(fakes)), np.zeros(len(reals_all))], np.r_[fakes, reals_all])
                 if len(fakes) else math.nan,
                 "pixel_f1": np.mean([r["pixel_f1"] for r in pix]) if pix else math.nan,
                 "pixel_iou": np.mean([r["pixel_iou"] for r in pix]) if pix else math.nan}
        out[group] = entry
    return out


def assert_same(got: float, want: float, what: str) -> None:
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), what
    else:
        assert got == pytest.approx(want, abs=1e-12), what


@pytest.mark.parametrize("score", ["p_fake", "p_fake_lm"])
def test_method_table_matches_independent_recomputation(score):
    rows, groups = synthetic_rows()
    table = method_table(rows, score, threshold=0.42)
    assert list(table["method"]) == ["1", "3", "7", "12", "15", "real", "other"]
    assert list(table.columns) == ["method", "count", "num_fake", "num_real", "mean_p_fake", "recall@0.5", "fpr@0.5",
                                   "recall@tuned", "fpr@tuned", "auroc", "pixel_f1", "pixel_iou"]
    expected = expected_method_table(rows, groups, score, 0.42)
    for got in table.to_dict("records"):
        for key, want in expected[got["method"]].items():
            assert_same(got[key], want, f"{got['method']} {key}")
    assert table["count"].sum() == len(rows)
    # The empty-mask fake of method 3 is counted but does not drag its pixel means to 0.
    method3 = table.set_index("method").loc["3"]
    assert method3["num_fake"] == 5
    assert method3["pixel_iou"] == pytest.approx(np.mean([r["pixel_iou"] for r in rows[6:10]]))


def test_method_table_without_tuned_threshold_or_pixels():
    rows = [{"image_path": fake_name(2, i), "label": 1, "p_fake": p} for i, p in enumerate((0.9, 0.4))]
    rows += [{"image_path": f"image__1__{i:032x}__frame00001.jpg", "label": 0, "p_fake": p}
             for i, p in enumerate((0.2, 0.6, 0.5))]
    table = method_table(rows, "p_fake").set_index("method")
    assert list(table.columns) == ["count", "num_fake", "num_real", "mean_p_fake", "recall@0.5", "fpr@0.5", "auroc"]
    # Fakes .9, .4 against reals .2, .6, .5: .9 beats all three, .4 beats one -> 4/6.
    assert table.loc["2", "auroc"] == pytest.approx(4 / 6)
    assert table.loc["2", "recall@0.5"] == 0.5 and table.loc["real", "fpr@0.5"] == pytest.approx(2 / 3)
    assert math.isnan(table.loc["real", "auroc"]) and math.isnan(table.loc["real", "recall@0.5"])


def test_rows_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        method_table([], "p_fake")
    with pytest.raises(ValueError, match="'p_fake_head'"):
        method_table([{"image_path": "a.jpg", "label": 1, "p_fake": 0.3}], "p_fake_head")
    with pytest.raises(ValueError, match=r"rows \[1\] have no 'p_fake' value"):
        method_table([{"image_path": "a.jpg", "label": 1, "p_fake": 0.3}, {"image_path": "b.jpg", "label": 0}], "p_fake")
    with pytest.raises(ValueError, match="finite numbers"):
        method_table([{"image_path": "a.jpg", "label": 1, "p_fake": "high"}], "p_fake")
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        method_table([{"image_path": "a.jpg", "label": 2, "p_fake": 0.3}], "p_fake")


def test_mask_area_buckets_on_constructed_rows():
    def fake(area, iou, empty=False):
        return {"image_path": "x.jpg", "label": 1, "p_fake": 0.5, "mask_area": area, "pixel_iou": iou,
                "pixel_f1": 2 * iou / (1 + iou), "empty_mask": empty}

    rows = [fake(0.0, 0.0, empty=True), fake(0.0099, 0.1), fake(0.01, 0.2), fake(0.049, 0.4), fake(0.05, 0.6),
            fake(0.3999, 0.5), fake(0.4, 0.8), fake(1.0, 0.9), fake(0.2, 0.3),
            {"image_path": "r.jpg", "label": 0, "p_fake": 0.1, "mask_area": 0.0, "positive_fraction": 0.5}]
    table = mask_area_table(rows)
    assert area_bucket_labels() == ["<1%", "1-5%", "5-15%", "15-40%", ">=40%"]
    assert list(table["bucket"]) == [EMPTY_BUCKET, "<1%", "1-5%", "5-15%", "15-40%", ">=40%"]
    assert list(table["count"]) == [1, 1, 2, 1, 2, 2]
    ious = [math.nan, 0.1, 0.3, 0.6, 0.4, 0.85]
    for got, want in zip(table["pixel_iou"], ious):
        assert_same(got, want, "pixel_iou")
    assert table["pixel_f1"].iloc[2] == pytest.approx((2 * 0.2 / 1.2 + 2 * 0.4 / 1.4) / 2)
    custom = mask_area_table(rows, edges=(0.5,))
    assert list(custom["bucket"]) == [EMPTY_BUCKET, "<50%", ">=50%"] and list(custom["count"]) == [1, 7, 1]


def test_mask_area_table_names_what_is_missing():
    rows = [{"image_path": "x.jpg", "label": 1, "p_fake": 0.5, "pixel_f1": 0.1, "pixel_iou": 0.1}]
    with pytest.raises(ValueError, match="'mask_area'"):
        mask_area_table(rows)
    with pytest.raises(ValueError, match="fraction in \\[0, 1\\]"):
        mask_area_table([{**rows[0], "mask_area": 1.5}])
    with pytest.raises(ValueError, match="strictly increasing"):
        mask_area_table([{**rows[0], "mask_area": 0.5}], edges=(0.2, 0.1))


def test_select_gallery_best_and_worst_scored_fakes():
    rows, _ = synthetic_rows()
    best, worst = select_gallery(rows, 3)
    scored = [(r["pixel_iou"], i) for i, r in enumerate(rows) if r["label"] == 1 and not r["empty_mask"]]
    assert best == [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))[:3]]
    assert worst == [i for _, i in sorted(scored)[:3]]
    assert all(rows[i]["label"] == 1 and not rows[i]["empty_mask"] for i in best + worst)
    tie = [{"image_path": f"{i}.jpg", "label": 1, "p_fake": 0.5, "pixel_f1": v, "pixel_iou": v, "empty_mask": False}
           for i, v in enumerate((0.5, 0.9, 0.5, 0.1))]
    assert select_gallery(tie, 2) == ([1, 0], [3, 2])
    assert select_gallery(tie, 3) == ([1, 0, 2], [3])  # never the same row twice
    without_flag = [{k: v for k, v in r.items() if k != "empty_mask"} for r in tie]  # e.g. hand-made rows
    assert select_gallery(without_flag, 1) == ([1], [3])


def test_confusion_counts_match_sklearn():
    rows, _ = synthetic_rows()
    y = [r["label"] for r in rows]
    for threshold in (0.5, 0.42):
        tn, fp, fn, tp = confusion_matrix(y, [r["p_fake"] >= threshold for r in rows]).ravel()
        assert confusion_counts(rows, "p_fake", threshold) == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}


def test_tables_agree_with_the_run_pixel_metrics():
    """Rows built as score_heads builds them (PixelMetricAccumulator.update): the per-method and
    per-bucket pixel means, weighted by their image counts, give back the run's pixel_f1 / pixel_iou."""
    rng = np.random.default_rng(5)
    acc = PixelMetricAccumulator(0.5)
    rows, scored_per_method = [], Counter()
    for i in range(30):
        label = int(i % 3 != 0)
        gt = np.zeros((24, 40), bool)
        if label and i != 4:  # record 4: a fake whose binarised mask is empty
            y, x = rng.integers(0, 20), rng.integers(0, 30)
            gt[y:y + rng.integers(1, 12), x:x + rng.integers(1, 20)] = True
        prob = np.clip(0.6 * gt + rng.random(gt.shape) * 0.6, 0, 1)
        method = 1 + i % 4
        name = fake_name(method, i) if label else f"image__{i}__{i:032x}__frame00001.jpg"
        rows.append({"image_path": name, "label": label, "p_fake": float(rng.random()), **acc.update(prob, gt, label),
                     "mask_area": float(gt.mean())})
        scored_per_method[str(method)] += int(label and gt.any())
    run = acc.compute()
    assert run["num_fake_empty_mask"] == 1
    table = method_table(rows, "p_fake").set_index("method")
    weights = np.array([scored_per_method[m] for m in table.index if m != "real"])
    for key in ("pixel_f1", "pixel_iou"):
        means = table.drop(index="real")[key].to_numpy()
        assert (weights * means).sum() / weights.sum() == pytest.approx(run[key])
    buckets = mask_area_table(rows).set_index("bucket")
    assert buckets.loc[EMPTY_BUCKET, "count"] == run["num_fake_empty_mask"]
    assert buckets["count"].sum() == sum(r["label"] for r in rows)
    filled = buckets.drop(index=EMPTY_BUCKET).query("count > 0")
    assert (filled["count"] * filled["pixel_iou"]).sum() / filled["count"].sum() == pytest.approx(run["pixel_iou"])


# --- the page ------------------------------------------------------------------------------------------------------


def gallery_inputs(tmp_path: Path) -> list[GalleryItem]:
    """A JPEG on disk (600x400) and an in-memory grey array, with masks and maps at their size."""
    rng = np.random.default_rng(1)
    photo = (rng.random((400, 600, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "frame.jpg")
    mask = np.zeros((400, 600), bool)
    mask[100:250, 200:400] = True
    prob = np.clip(mask * 0.8 + rng.random((400, 600)) * 0.2, 0, 1)
    grey = (rng.random((120, 90)) * 255).astype(np.uint8)
    return [GalleryItem(tmp_path / "frame.jpg", mask, prob, "best one"),
            GalleryItem(grey, np.ones((120, 90), bool), np.zeros((120, 90)), "worst one")]


METRICS = {"samples": 48, "auroc": 0.8125, "ap": 0.79, "acc@0.5": 0.75, "f1@0.5": 0.7, "acc@tuned": float("nan"),
           "f1@tuned": float("nan"), "threshold": float("nan"), "pixel_f1": 0.51, "pixel_iou": 0.4, "ciou": 0.38,
           "cdice": 0.55, "false_alarm": 0.07, "num_fake_empty_mask": 1, "score": 0.5742}


def build_report(tmp_path: Path):
    rows, _ = synthetic_rows()
    items = gallery_inputs(tmp_path)
    return write_report(tmp_path / "out" / "report.html", metrics=METRICS, rows=rows,
                        score_columns=["p_fake", "p_fake_lm"], thresholds={"p_fake": 0.42, "p_fake_lm": float("nan")},
                        title="Task 3 test run", description={"dataset": "testset2/annotation.json", "checkpoint": "ck"},
                        gallery_best=items[:1], gallery_worst=items[1:]), rows


def test_report_is_self_contained_and_holds_the_tables(tmp_path):
    report, rows = build_report(tmp_path)
    text = report.path.read_text(encoding="utf-8")
    assert report.path.parent.is_dir() and sorted(p.name for p in report.path.parent.iterdir()) == ["report.html"]
    pictures = assert_self_contained(text)
    assert len(pictures) == 4  # curves, the overlay's colour scale, two gallery panels
    assert pictures[1].size == (256, 14)
    panels = pictures[2:]
    assert panels[0].size == (3 * 256 + 8, 171) and panels[1].size == (3 * 90 + 8, 120)  # 600x400 -> 256x171
    page = Page(text)
    assert page.headings[0] == ("h1", "Task 3 test run")
    assert [h for tag, h in page.headings if tag == "h2"] == list(HEADINGS)

    metrics_rows = page.table(first_header="metric")[1:]
    assert [r[0] for r in metrics_rows] == list(METRICS)
    assert dict(metrics_rows)["auroc"] == "0.8125" and dict(metrics_rows)["num_fake_empty_mask"] == "1"
    assert dict(metrics_rows)["acc@tuned"] == "—"
    run = dict(page.table(first_header="key")[1:])
    assert run["images"] == str(len(rows)) and run["fakes"] == str(sum(r["label"] for r in rows))

    tables = report.tables
    for column in ("p_fake", "p_fake_lm"):
        shown = page.table(caption=f"score {column}")
        frame = tables.methods[column]
        assert shown[0] == list(frame.columns)
        assert shown[1:] == [[format_value(v) for v in row] for row in frame.itertuples(index=False)]
    assert tables.methods["p_fake"].equals(method_table(rows, "p_fake", 0.42))
    assert "recall@tuned" not in tables.methods["p_fake_lm"].columns
    assert tables.mask_area.equals(mask_area_table(rows))
    area = page.table(first_header="bucket")
    assert [r[0] for r in area[1:]] == list(tables.mask_area["bucket"])

    tuned = confusion_counts(rows, "p_fake", 0.42)
    assert tables.confusion["p_fake"]["tuned"] == tuned and "tuned" not in tables.confusion["p_fake_lm"]
    assert page.table(caption="p_fake >= tuned 0.4200")[1:] == [["true real", str(tuned["tn"]), str(tuned["fp"])],
                                                               ["true fake", str(tuned["fn"]), str(tuned["tp"])]]
    assert text.count(NO_TUNED) == 1
    assert "best one" in text and "worst one" in text


def test_report_sections_degrade_to_notes(tmp_path):
    rows = [{"image_path": fake_name(4, 0), "label": 1, "p_fake": 0.7},
            {"image_path": fake_name(4, 1), "label": 1, "p_fake": 0.2}]
    report = write_report(tmp_path / "r.html", metrics={}, rows=rows, score_columns=["p_fake"])
    text = report.path.read_text(encoding="utf-8")
    assert [h for tag, h in Page(text).headings if tag == "h2"] == list(HEADINGS)
    for phrase in ("only one class", NO_TUNED, "not available: the rows need mask_area", "no gallery items given"):
        assert phrase in text
    assert report.tables.mask_area is None and "<img" not in text


def test_report_rejects_bad_inputs(tmp_path):
    rows, _ = synthetic_rows()
    with pytest.raises(ValueError, match="not among score_columns"):
        report_tables(rows, ["p_fake"], {"p_fake_head": 0.3})
    with pytest.raises(ValueError, match="at least one score column"):
        report_tables(rows, [])
    bad = GalleryItem(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), bool), np.zeros((12, 10)), "crooked.jpg")
    with pytest.raises(ValueError, match="crooked.jpg.*same size"):
        write_report(tmp_path / "r.html", metrics={}, rows=rows, score_columns=["p_fake"], gallery_best=[bad])
    assert not (tmp_path / "r.html").exists() and list(tmp_path.iterdir()) == []


def test_row_caption():
    row = {"image_path": "a/b/3__x__y__frame1.jpg", "label": 1, "p_fake": 0.91234, "pixel_iou": 0.5, "pixel_f1": 2 / 3}
    assert row_caption(row, ["p_fake"]) == "3__x__y__frame1.jpg · pixel_iou 0.5000 · pixel_f1 0.6667 · p_fake 0.9123"


# --- compare_runs.py -----------------------------------------------------------------------------------------------


def write_run_csvs(tmp_path: Path) -> list[Path]:
    """Three CSVs in the task layouts, written by the real appender (columns differ per task)."""
    t1 = tmp_path / "task1_modular_lora" / "subtask_vit_head_eval" / "metrics.csv"
    t2 = tmp_path / "task2_lm_lora" / "evaluation" / "metrics.csv"
    t3 = tmp_path / "task3_hybrid_lora" / "evaluation" / "metrics.csv"
    lead = ["timestamp", "dataset", "samples"]
    for stamp, auroc, pixel_f1 in (("2025-03-01T10:00:00", 0.91, 0.52), ("2025-03-02T11:00:00", 0.93, float("nan"))):
        append_csv_row(t1, {"timestamp": stamp, "dataset": "test.json", "samples": 100, "auroc": auroc,
                            "acc@0.5": 0.8, "f1@0.5": 0.79, "pixel_f1": pixel_f1, "pixel_iou": 0.41, "score": 0.6,
                            "ckpt_path": "/ck"}, lead)
    append_csv_row(t2, {"timestamp": "2025-03-03T09:30:00", "dataset": "test.json", "samples": 100, "auroc": 0.7,
                        "acc": 0.64, "f1": 0.6, "image_size": "native"}, lead)
    append_csv_row(t3, {"timestamp": "2025-03-04T08:00:00", "dataset": "test.json", "samples": 100,
                        "lm_auroc": 0.88, "head_auroc": 0.86, "pixel_iou": 0.35, "score": 0.55, "head_score": 0.54},
                   lead)
    return [t1, t2, t3]


def run_compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPARE), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compare_runs():
    """The script as a module, to call main() in-process (one subprocess run checks the command line itself)."""
    return load_script("compare_runs")


RUNS = ["subtask_vit_head_eval/metrics.csv#1", "subtask_vit_head_eval/metrics.csv#2",
        "task2_lm_lora/evaluation/metrics.csv#1", "task3_hybrid_lora/evaluation/metrics.csv#1"]
EXPECTED = {"auroc": ["0.9100", "0.9300", "0.7000", "—"], "lm_auroc": ["—", "—", "—", "0.8800"],
            "head_auroc": ["—", "—", "—", "0.8600"], "acc@0.5": ["0.8000", "0.8000", "0.6400", "—"],
            "f1@0.5": ["0.7900", "0.7900", "0.6000", "—"], "pixel_f1": ["0.5200", "—", "—", "—"],
            "pixel_iou": ["0.4100", "0.4100", "—", "0.3500"], "score": ["0.6000", "0.6000", "—", "0.5500"],
            "head_score": ["—", "—", "—", "0.5400"]}


def test_compare_runs_table_and_page(tmp_path):
    csvs = write_run_csvs(tmp_path)
    done = run_compare(*map(str, csvs), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    header = done.stdout.splitlines()[0].split()
    assert header == RUNS
    for metric, values in EXPECTED.items():
        assert lines[metric] == values, metric
    assert lines["timestamp"] == ["2025-03-01T10:00:00", "2025-03-02T11:00:00", "2025-03-03T09:30:00",
                                  "2025-03-04T08:00:00"]
    assert lines["samples"] == ["100"] * 4
    text = (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    charts = assert_self_contained(text)
    assert len(charts) == len(EXPECTED)
    page = Page(text)
    shown = page.table(first_header="metric")
    assert shown[0] == ["metric", *RUNS]
    assert {row[0]: row[1:] for row in shown[1:]} == EXPECTED
    assert [r[0] for r in page.table(first_header="run")[1:]] == RUNS
    assert [h for tag, h in page.headings if tag == "h2"] == ["Runs", "Metrics", "Charts"]


def test_compare_runs_chosen_metrics_missing_values_and_default_out(tmp_path, compare_runs, capsys):
    csvs = write_run_csvs(tmp_path)
    empty = tmp_path / "empty" / "metrics.csv"
    empty.parent.mkdir()
    empty.write_text("timestamp,dataset,auroc\n", encoding="utf-8")
    assert compare_runs.main([str(csvs[1]), str(empty), str(csvs[0]), "--metrics", "auroc", "image_size", "nope"]) == 0
    err = capsys.readouterr().err
    assert "no runs" in err and "'nope' is in none of the CSVs" in err
    page = Page((csvs[1].parent / "compare.html").read_text(encoding="utf-8"))
    rows = {row[0]: row[1:] for row in page.table(first_header="metric")[1:]}
    assert rows == {"auroc": ["0.7000", "0.9100", "0.9300"], "image_size": ["native", "—", "—"], "nope": ["—"] * 3}
    assert compare_runs.main([str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv: no such metrics CSV" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b\n1,"unterminated\n', encoding="utf-8")
    assert compare_runs.main([str(bad)]) == 2
    assert "bad.csv: not a readable metrics CSV" in capsys.readouterr().err


def test_short_labels_tell_csvs_apart(compare_runs):
    paths = [Path("r/task2_lm_lora/evaluation/metrics.csv"), Path("r/task3_hybrid_lora/evaluation/metrics.csv"),
             Path("r/task1/eval.csv"), Path("metrics.csv")]
    assert compare_runs.short_labels(paths) == ["task2_lm_lora/evaluation/metrics.csv",
                                                "task3_hybrid_lora/evaluation/metrics.csv", "eval.csv", "metrics.csv"]


# --- in a browser --------------------------------------------------------------------------------------------------


@needs_chromium
def test_report_opens_in_chromium(tmp_path):
    report, _ = build_report(tmp_path)
    assert_rendered(tmp_path, report.path, list(HEADINGS), min_blue=150)


@needs_chromium
def test_compare_page_opens_in_chromium(tmp_path, compare_runs):
    csvs = write_run_csvs(tmp_path)
    assert compare_runs.main([*map(str, csvs), "--out", str(tmp_path)]) == 0
    assert_rendered(tmp_path, tmp_path / "compare.html", ["Runs", "Metrics", "Charts"], min_blue=5000)


def error_map_report(tmp_path: Path):
    """A report with the error map beside each overlay, a false alarm and example thumbnails."""
    rows, _ = synthetic_rows()
    best, _ = gallery_inputs(tmp_path)
    best = GalleryItem(best.image, best.gt_mask, best.prob_map, "best one", errors_at=0.5)
    real = np.zeros((400, 600), bool)
    left_quarter = np.where(np.arange(600)[None, :] < 150, 0.9, 0.1) * np.ones((400, 1))
    alarm = GalleryItem(tmp_path / "frame.jpg", real, left_quarter, "a real one", errors_at=0.5)
    examples = [Example(tmp_path / "frame.jpg", "sure", "surest fakes (called fake)"),
                Example(tmp_path / "frame.jpg", "wrong", "worst misses (fakes called real)"),
                Example(tmp_path / "absent.jpg", "gone", "worst misses (fakes called real)")]
    return write_report(tmp_path / "out" / "report.html", metrics=METRICS, rows=rows, score_columns=["p_fake"],
                        title="errors", gallery_best=[best], false_alarms=[alarm], examples=examples)


def test_report_error_map_false_alarms_and_examples(tmp_path):
    report = error_map_report(tmp_path)
    text = report.path.read_text(encoding="utf-8")
    pictures = assert_self_contained(text)
    # curves, the gallery's scale, its panel, the false alarms' scale, their panel, two example thumbnails
    assert len(pictures) == 7
    panel = np.asarray(pictures[2].convert("RGB"))
    assert panel.shape == (171, 4 * 256 + 12, 3), "image | ground truth | overlay | error map"
    errors = panel[:, 3 * 256 + 12:].reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(errors, axis=0)}
    assert {(0, 170, 0), (235, 235, 235)} <= colours, "found pixels green, the rest grey"
    alarm = np.asarray(pictures[4].convert("RGB"))[:, 3 * 256 + 12:]
    red = (alarm == (220, 0, 0)).all(axis=-1).mean()
    assert 0.2 < red < 0.3, "the quarter of the real image called forged is red (false alarm)"
    assert [p.size for p in pictures[5:]] == [(200, 133)] * 2
    page = Page(text)
    assert [h for tag, h in page.headings if tag == "h3"][-2:] == ["surest fakes (called fake)",
                                                                  "worst misses (fakes called real)"]
    assert "1 example image(s) could not be opened" in text
    assert "error map at pixel threshold 0.5" in text and "FP false alarm" in text


def test_false_alarm_and_example_choice():
    rows = [{"label": 0, "p_fake": 0.9, "positive_fraction": 0.2},
            {"label": 0, "p_fake": 0.1, "positive_fraction": 0.0},
            {"label": 1, "p_fake": 0.8}, {"label": 1, "p_fake": 0.3},
            {"label": 0, "p_fake": 0.6, "positive_fraction": 0.5}]
    assert select_false_alarms(rows, 5) == [4, 0]
    assert select_examples(rows, "p_fake", 0.5, 2) == {
        "surest fakes (called fake)": [2], "surest reals (called real)": [1],
        "worst false alarms (reals called fake)": [0, 4], "worst misses (fakes called real)": [3]}


def test_tables_scroll_inside_their_box():
    """compare.html overflowed with long CSV paths: every table sits in a scrolling box, text cells wrap."""
    from qwen_forensics.report.page import STYLE, html_table
    import pandas as pd
    assert html_table(pd.DataFrame({"a": [1]})).startswith('<div class="wide"><table>')
    assert ".wide { overflow-x: auto" in STYLE and "td.text { overflow-wrap: break-word" in STYLE
    assert "max-width: 1200px" not in STYLE, "the page uses the screen's width"


@needs_chromium
def test_error_map_report_opens_in_chromium(tmp_path):
    report = error_map_report(tmp_path)
    assert_rendered(tmp_path, report.path, list(HEADINGS), min_blue=150)


def training_rows() -> list[dict]:
    """A training log as lora_train.py appends it (text cells), validation NaN in the first epoch."""
    rows = []
    for epoch in range(4):
        rows.append({"epoch": str(epoch), "step": str(10 * (epoch + 1)), "loss": str(1.0 / (epoch + 1)),
                     "loss_cls": str(0.6 / (epoch + 1)), "loss_evi": "0.3", "lr_head": "0.001",
                     "val_auroc": "nan" if epoch == 0 else str(0.6 + 0.1 * epoch), "val_pixel_iou": str(0.1 * epoch),
                     "val_leak_check": "clean", "val_overlap_records": "0", "val_groups": "40", "run_id": "r1"})
    return rows


def test_training_page_draws_the_log(tmp_path):
    from qwen_forensics.report import TRAINING_HTML, read_log_rows, write_training_report
    from qwen_forensics.report.training import TRAINING_HEADINGS
    log = tmp_path / "log.csv"
    for row in training_rows():
        append_csv_row(log, row, ["epoch"])
    append_csv_row(log, {**training_rows()[0], "run_id": "other"}, ["epoch"])
    rows = read_log_rows(log, "r1")
    assert len(rows) == 4
    path = write_training_report(tmp_path / TRAINING_HTML, rows, title="Training: t", description={"run id": "r1"})
    text = path.read_text(encoding="utf-8")
    assert len(assert_self_contained(text)) == 2, "loss chart and validation chart"
    page = Page(text)
    assert [h for tag, h in page.headings if tag == "h2"] == list(TRAINING_HEADINGS)
    last = dict(page.table(first_header="column")[1:])
    assert last == {"epoch": "3.0000", "loss": "0.2500", "loss_cls": "0.1500", "loss_evi": "0.3000",
                    "val_auroc": "0.9000", "val_pixel_iou": "0.3000"}
    empty = write_training_report(tmp_path / "empty.html", [], title="t", description={})
    assert "nothing logged yet" in empty.read_text(encoding="utf-8")


@needs_chromium
def test_training_page_opens_in_chromium(tmp_path):
    from qwen_forensics.report import write_training_report
    from qwen_forensics.report.training import TRAINING_HEADINGS
    path = write_training_report(tmp_path / "training.html", training_rows(), title="Training: t",
                                 description={"run id": "r1"})
    assert_rendered(tmp_path, path, list(TRAINING_HEADINGS), min_blue=300)


def test_method_names_from_the_data_folder(tmp_path):
    """ForgeryNet's method list ships with no name: an optional method_names.json adds a name column; a bad
    file is left out with a note naming it and the expected form."""
    from qwen_forensics.data.methods import METHOD_NAMES_FILE, read_method_names
    rows, _ = synthetic_rows()
    assert read_method_names(tmp_path) == ({}, None)
    (tmp_path / METHOD_NAMES_FILE).write_text(json.dumps({"1": "first method", "7": "seventh"}))
    names, source = read_method_names(tmp_path)
    assert names == {"1": "first method", "7": "seventh"} and str(tmp_path / METHOD_NAMES_FILE) in source
    table = method_table(rows, "p_fake", None, names)
    assert list(table.columns[:2]) == ["method", "name"]
    assert dict(zip(table["method"], table["name"]))["1"] == "first method"
    assert dict(zip(table["method"], table["name"]))["3"] == ""
    report = write_report(tmp_path / "r.html", metrics=METRICS, rows=rows, score_columns=["p_fake"],
                          method_names=names, method_names_note=source)
    page = Page(report.path.read_text(encoding="utf-8"))
    assert page.table(caption="score p_fake")[1][:2] == ["1", "first method"]
    (tmp_path / METHOD_NAMES_FILE).write_text(json.dumps({"16": "no such method"}))
    names, why = read_method_names(tmp_path)
    assert names == {} and "left out" in why and "1..15" in why


def test_pictures_drawn_on_threads_keep_the_page_of_one_thread(tmp_path, monkeypatch):
    """render_report draws its pictures on REPORT_THREADS threads: the page is the one a single thread draws,
    every panel in its place."""
    from qwen_forensics.report import page as report_page
    rows, _ = synthetic_rows()
    photo, grey = gallery_inputs(tmp_path)
    items = [GalleryItem(item.image, item.gt_mask, item.prob_map, f"panel {k}", errors_at=0.5 if k % 2 else None)
             for k, item in enumerate([photo, grey] * 4)]
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "small.png")
    examples = [Example(tmp_path / ("frame.jpg" if k % 2 else "small.png"), f"example {k}", f"group {k % 3}")
                for k in range(6)] + [Example(tmp_path / "missing.jpg", "gone", "group 0")]

    def page_with(threads: int) -> str:
        monkeypatch.setattr(report_page, "REPORT_THREADS", threads)
        text, _ = report_page.render_report(metrics=METRICS, rows=rows, score_columns=["p_fake"],
                                            thresholds={"p_fake": 0.42}, gallery_best=items[:3],
                                            gallery_worst=items[3:6], false_alarms=items[6:], examples=examples)
        return text

    threaded = page_with(8)
    assert threaded == page_with(1)
    assert [threaded.index(f"panel {k}</figcaption>") for k in range(8)] == sorted(
        threaded.index(f"panel {k}</figcaption>") for k in range(8))
    assert len(assert_self_contained(threaded)) == 1 + 2 + 8 + 6  # curves, two colour scales, panels, thumbnails
    assert "1 example image(s) could not be opened" in threaded
