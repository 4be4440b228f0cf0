"""The four evaluation scripts on the tiny model, run in this process as the user runs them: the shared
tail (predictions file, heatmaps, report.html, CSV row) and its numbers, recomputed independently
from the predictions file; and every threshold-tuning branch, which must read the validation index only.

The session's tiny workspace (``conftest.tiny_root``) holds the tiny model, a small demo set and a
checkpoint of each task made by its own training script (one optimizer step); every test reuses them.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from browser import Page, assert_rendered, assert_self_contained, needs_chromium
from qwen_forensics.data.methods import group_order, manipulation_method
from qwen_forensics.data.validate import BAD_LABEL, BAD_RECORD
from qwen_forensics.evaluation.metrics import tune_threshold
from qwen_forensics.evaluation.outputs import NO_HEATMAP_NOTE, REPORT_NAME
from qwen_forensics.report.page import HEADINGS, format_value
from qwen_forensics.report.tables import select_examples
from scripts import CODE, csv_rows, demo_index, run_script

# The score columns of each evaluation's per-image rows, and whether it has heatmaps.
SCORES = {"lora_eval": ["p_fake"], "full_model_eval": ["p_fake"], "lora_infer": ["p_fake"],
          "hybrid_eval": ["p_fake_lm", "p_fake_head"]}
WITH_HEATMAPS = ("lora_eval", "hybrid_eval")


pytestmark = pytest.mark.usefixtures("single_thread")


def eval_sets(script: str, ckpts: dict, out: Path, test: Path, val: Path | None) -> list[str]:
    """The overrides that point one evaluation script at its checkpoint, the indexes and ``out``."""
    common = [f"out_dir={out}", f"csv_path={out / 'metrics.csv'}", f"output_json={out / 'predictions.json'}",
              "num_workers=0", "batch_size=8"]
    if script == "lora_eval":
        return [*common, f"ckpt_path={ckpts['task1']}", f"ann_test={test}", f"ann_val={json.dumps(val and str(val))}",
                "num_heatmaps=3"]
    if script == "full_model_eval":
        return [*common, f"lora_checkpoint={ckpts['task1']}", f"annotation_file={test}",
                f"val_annotation_file={json.dumps(val and str(val))}", "torch_dtype=float32"]
    if script == "lora_infer":
        return [*common, f"lora_path={ckpts['task2']}", f"annotation_file={test}",
                f"val_annotation_file={json.dumps(val and str(val))}", "torch_dtype=float32"]
    final = ckpts["task3"] / "final"
    return [*common, f"lora_checkpoint={final / 'adapter'}", f"head_checkpoint={final / 'heads.safetensors'}",
            f"fusion_checkpoint={final / 'fusion.safetensors'}", f"annotation_file={test}",
            f"val_annotation_file={json.dumps(val and str(val))}", "torch_dtype=float32", "num_heatmaps=3"]


@pytest.fixture(scope="module")
def ckpts(task1_ckpt, task2_adapter, task3_run) -> dict:
    return {"task1": task1_ckpt, "task2": task2_adapter, "task3": task3_run}


@pytest.fixture(scope="module")
def plain_runs(tiny_root, ckpts, tmp_path_factory) -> dict:
    """Each evaluation script on the test index with the validation index; its outputs and printout."""
    runs = {}
    for script in SCORES:
        out = tmp_path_factory.mktemp(f"{script}_out")
        printed = run_script(script, tiny_root, *eval_sets(script, ckpts, out, demo_index(tiny_root, "test"),
                                                           demo_index(tiny_root, "val")))
        runs[script] = {"out": out, "printed": printed, "rows": json.loads((out / "predictions.json").read_text()),
                        "csv": csv_rows(out / "metrics.csv")[-1],
                        "page": (out / REPORT_NAME).read_text(encoding="utf-8")}
    return runs


# --------------------------------------------------------------------------------------- the report
@pytest.mark.parametrize("script", list(SCORES))
def test_each_script_writes_the_report_next_to_its_csv_and_prints_it(plain_runs, script):
    got = plain_runs[script]
    report = got["out"] / REPORT_NAME
    assert report.is_file() and (got["out"] / "metrics.csv").is_file()
    assert f"report: {report}" in got["printed"]
    page = Page(got["page"])
    assert [h for tag, h in page.headings if tag == "h2"] == list(HEADINGS)
    pictures = assert_self_contained(got["page"])
    shown_metrics = dict(page.table(first_header="metric")[1:])
    auroc_key = "lm_auroc" if script == "hybrid_eval" else "auroc"
    assert shown_metrics[auroc_key] == format_value(float(got["csv"][auroc_key]))
    run_facts = dict(page.table(first_header="key")[1:])
    assert run_facts["images"] == str(len(got["rows"])) == got["csv"]["samples"]
    # The demo split is grouped by video: the guard ran and found nothing (CSV and report say so).
    assert (got["csv"]["val_leak_check"], got["csv"]["val_overlap_records"]) == ("clean", "0")
    assert (run_facts["val_leak_check"], run_facts["val_groups"]) == ("clean", got["csv"]["val_groups"])
    score_column = "p_fake_lm" if script == "hybrid_eval" else "p_fake"
    examples = sum(len(group) for group in select_examples(got["rows"], score_column, 0.5, 3).values())
    assert examples > 0
    if script in WITH_HEATMAPS:
        assert html.escape(NO_HEATMAP_NOTE) not in got["page"]
        # The curves; the gallery (its colour scale, up to 4 best and 4 worst of the scored fakes); the false
        # alarms (a scale and up to 4 reals with pixels called forged); the example thumbnails.
        scored = sum(r["label"] == 1 and not r["empty_mask"] for r in got["rows"])
        alarms = min(4, sum(r["label"] == 0 and r["positive_fraction"] > 0 for r in got["rows"]))
        assert got["page"].count("<figure>") == min(8, scored) + alarms + examples
        assert len(pictures) == 1 + 1 + min(8, scored) + (1 + alarms if alarms else 0) + examples
        assert "error map at pixel threshold 0.5" in got["page"]
    else:
        assert got["page"].count(html.escape(NO_HEATMAP_NOTE)) == 3
        assert len(pictures) == 1 + examples == 1 + got["page"].count("<figure>")  # curves and the examples


def _rate(scores: np.ndarray, threshold: float) -> float:
    return float((scores >= threshold).mean()) if scores.size else float("nan")


def _method_rows(rows: list[dict], column: str, threshold: float) -> list[list[str]]:
    """The per-method table recomputed with plain numpy/sklearn from the predictions file."""
    groups = sorted({manipulation_method(r["image_path"]) for r in rows}, key=group_order)
    reals = np.array([r[column] for r in rows if r["label"] == 0])
    out = []
    for group in groups:
        members = [r for r in rows if manipulation_method(r["image_path"]) == group]
        fakes = np.array([r[column] for r in members if r["label"] == 1])
        own_reals = np.array([r[column] for r in members if r["label"] == 0])
        nan = float("nan")
        auroc = (float(roc_auc_score(np.r_[np.ones(fakes.size), np.zeros(reals.size)], np.r_[fakes, reals]))
                 if fakes.size and reals.size else nan)
        line = [group, len(members), fakes.size, own_reals.size, float(np.mean([r[column] for r in members])),
                _rate(fakes, 0.5), _rate(own_reals, 0.5), _rate(fakes, threshold), _rate(own_reals, threshold), auroc]
        if any("pixel_iou" in r for r in rows):
            scored = [r for r in members if r["label"] == 1 and not r["empty_mask"]]
            line += [float(np.mean([r["pixel_f1"] for r in scored])) if scored else nan,
                     float(np.mean([r["pixel_iou"] for r in scored])) if scored else nan]
        out.append([format_value(v) for v in line])
    return out


@pytest.mark.parametrize("script", list(SCORES))
def test_per_method_table_and_confusion_equal_a_recomputation_from_the_predictions(plain_runs, script):
    got = plain_runs[script]
    page = Page(got["page"])
    rows = got["rows"]
    labels = np.array([r["label"] for r in rows])
    for column in SCORES[script]:
        prefix = {"p_fake_lm": "lm_", "p_fake_head": "head_"}.get(column, "")
        threshold = float(got["csv"][f"{prefix}threshold"])
        assert np.isfinite(threshold), "the validation index gives a tuned threshold"
        shown = page.table(caption=f"score {column}")
        assert shown[0][:2] == ["method", "count"]
        assert shown[1:] == _method_rows(rows, column, threshold)
        for name, cut in (("0.5", 0.5), ("tuned", threshold)):
            caption = f"{column} >= 0.5" if name == "0.5" else f"{column} >= tuned {threshold:.4f}"
            called = np.array([r[column] for r in rows]) >= cut
            expected = [["true real", str(int((~called & (labels == 0)).sum())), str(int((called & (labels == 0)).sum()))],
                        ["true fake", str(int((~called & (labels == 1)).sum())), str(int((called & (labels == 1)).sum()))]]
            assert page.table(caption=caption)[1:] == expected


def _binarised(mask_file: Path) -> np.ndarray:
    """The documented rule, written out: scale to [0, 1], keep >= 0.2 * p99 and > 0."""
    values = np.asarray(Image.open(mask_file).convert("L"), dtype=np.float64) / 255.0
    return (values >= 0.2 * np.quantile(values, 0.99)) & (values > 0)


@pytest.mark.parametrize("script", WITH_HEATMAPS)
def test_rows_carry_mask_area_and_the_area_table_and_gallery_follow_it(plain_runs, tiny_root, script):
    got = plain_runs[script]
    test = {r["image_path"]: r for r in json.loads(demo_index(tiny_root, "test").read_text())}
    for row in got["rows"]:
        expected = _binarised(tiny_root / "data" / test[row["image_path"]]["mask_path"]).mean() if row["label"] else 0.0
        assert row["mask_area"] == pytest.approx(expected, abs=1e-12), row["image_path"]
    page = Page(got["page"])
    area = page.table(first_header="bucket")[1:]
    fakes = [r for r in got["rows"] if r["label"] == 1]
    assert sum(int(r[1]) for r in area) == len(fakes)
    # Best gallery entry first: the scored fake with the highest pixel IoU (ties: earlier row).
    scored = [r for r in fakes if not r["empty_mask"]]
    best = max(scored, key=lambda r: (r["pixel_iou"], -got["rows"].index(r)))
    first_caption = got["page"].split("<figcaption>", 1)[1].split("</figcaption>", 1)[0]
    assert first_caption.startswith(Path(best["image_path"]).name)
    pictures = sorted((got["out"] / "heatmaps").glob("*.png"))
    assert len(pictures) == 3 and all(p.name.split("_", 1)[0].isdigit() for p in pictures)


@needs_chromium
def test_a_script_report_renders_in_chromium(plain_runs, tmp_path):
    assert_rendered(tmp_path, plain_runs["hybrid_eval"]["out"] / REPORT_NAME, list(HEADINGS), min_blue=150)


# --------------------------------------------------------------------------- thresholds tuned on val only
def _flipped(records: list[dict], data_root: Path, mask_dir: str) -> list[dict]:
    """The records with every label flipped: a fake becomes a real of its size, a real becomes a fake
    with an empty mask (written under ``data_root/mask_dir``)."""
    out = []
    for record in records:
        with Image.open(data_root / record["image_path"]) as img:
            width, height = img.size
        if record["label"] == 1:
            out.append({**record, "mask_path": f"{height}x{width}", "label": 0})
        else:
            mask = f"{mask_dir}/{Path(record['image_path']).stem}.png"
            (data_root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (width, height), 0).save(data_root / mask)
            out.append({**record, "mask_path": mask, "label": 1})
    return out


@pytest.fixture(scope="module")
def tuning_runs(tiny_root, ckpts, tmp_path_factory) -> dict:
    """Each script twice, tuning on the validation index V: the test index is T + V, then flip(T) + V.

    V inside the test set puts its predictions in the predictions file (so the tuned threshold can be
    recomputed from them); flipping T changes the test labels and nothing the tuning may read.
    """
    data = tiny_root / "data"
    test = json.loads(demo_index(tiny_root, "test").read_text())
    val = json.loads(demo_index(tiny_root, "val").read_text())
    folder = tmp_path_factory.mktemp("tuning_indexes")
    indexes = {"same": folder / "test_plus_val.json", "flipped": folder / "flipped_test_plus_val.json"}
    indexes["same"].write_text(json.dumps(test + val))
    indexes["flipped"].write_text(json.dumps(_flipped(test, data, "flipped_masks") + val))
    runs = {}
    for script in SCORES:
        for name, path in indexes.items():
            out = tmp_path_factory.mktemp(f"{script}_{name}")
            run_script(script, tiny_root, *eval_sets(script, ckpts, out, path, demo_index(tiny_root, "val")))
            runs[script, name] = {"rows": json.loads((out / "predictions.json").read_text()),
                                  "csv": csv_rows(out / "metrics.csv")[-1]}
    return {"runs": runs, "num_test": len(test), "val_labels": [r["label"] for r in val]}


@pytest.mark.parametrize("script", list(SCORES))
def test_tuned_threshold_comes_from_the_validation_predictions_only(tuning_runs, script):
    n, val_labels = tuning_runs["num_test"], tuning_runs["val_labels"]
    same, flipped = tuning_runs["runs"][script, "same"], tuning_runs["runs"][script, "flipped"]
    # The test labels really differ between the two runs (every record of T flipped, V untouched)...
    assert [1 - r["label"] for r in same["rows"][:n]] == [r["label"] for r in flipped["rows"][:n]]
    assert [r["label"] for r in same["rows"][n:]] == [r["label"] for r in flipped["rows"][n:]] == val_labels
    for column in SCORES[script]:
        prefix = {"p_fake_lm": "lm_", "p_fake_head": "head_"}.get(column, "")
        tuned = float(same["csv"][f"{prefix}threshold"])
        # ...the threshold is the F1-best cut of the validation predictions (recomputed from the rows)...
        val_scores = [r[column] for r in same["rows"][n:]]
        assert tuned == pytest.approx(tune_threshold(val_labels, val_scores), abs=1e-6), column
        assert tuned != pytest.approx(tune_threshold([r["label"] for r in same["rows"]],
                                                     [r[column] for r in same["rows"]]), abs=1e-6), \
            "tuning on the whole test index would give another threshold here, so this run tells them apart"
        # ...and it does not move when the test labels are flipped, while label-dependent metrics do.
        assert float(flipped["csv"][f"{prefix}threshold"]) == tuned, column
        for run in (same, flipped):
            labels = [r["label"] for r in run["rows"]]
            auroc = roc_auc_score(labels, [r[column] for r in run["rows"]])
            assert float(run["csv"][f"{prefix}auroc"]) == pytest.approx(auroc, abs=1e-9)
            called = np.array([r[column] for r in run["rows"]]) >= tuned
            acc = float((called == np.array(labels).astype(bool)).mean())
            assert float(run["csv"][f"{prefix}acc@tuned"]) == pytest.approx(acc, abs=1e-9)
        assert float(flipped["csv"][f"{prefix}auroc"]) != pytest.approx(float(same["csv"][f"{prefix}auroc"]))


# --------------------------------------------------------------------------- Task 3: one score definition
def test_task3_training_log_val_scores_are_the_evaluation_scores(tiny_root, task3_run, tmp_path):
    """hybrid_train.py validated its one epoch on V; hybrid_eval.py on V with the same weights must report the
    same numbers under the same names (val_X in the log = X in the CSV), score from the LM's AUROC."""
    log, = csv_rows(task3_run / "log.csv")
    run_script("hybrid_eval", tiny_root, *eval_sets("hybrid_eval", {"task3": task3_run}, tmp_path,
                                                    demo_index(tiny_root, "val"), None))
    row = csv_rows(tmp_path / "metrics.csv")[-1]
    for name in ("lm_auroc", "head_auroc", "pixel_iou", "pixel_f1", "score", "head_score"):
        assert float(log[f"val_{name}"]) == pytest.approx(float(row[name]), abs=1e-6), name
    rows = json.loads((tmp_path / "predictions.json").read_text())
    labels = [r["label"] for r in rows]
    scored = [r for r in rows if r["label"] == 1 and not r["empty_mask"]]
    pixels = np.mean([r["pixel_f1"] for r in scored]) + np.mean([r["pixel_iou"] for r in scored])
    for name, column in (("score", "p_fake_lm"), ("head_score", "p_fake_head")):
        expected = (roc_auc_score(labels, [r[column] for r in rows]) + pixels) / 3
        assert float(log[f"val_{name}"]) == pytest.approx(expected, abs=1e-6), name


# --------------------------------------------------------------------------- pixel metrics from the ground truth
@pytest.fixture(scope="module")
def pixel_runs(tiny_root, ckpts, tmp_path_factory) -> dict:
    """The heatmap scripts on the test index plus one fake whose mask is empty, at pixel threshold 0
    (every pixel called positive, so every pixel metric is away from 0) and at the default 0.5."""
    data = tiny_root / "data"
    test = json.loads(demo_index(tiny_root, "test").read_text())
    fake = next(r for r in test if r["label"] == 1)
    with Image.open(data / fake["image_path"]) as img:
        Image.new("L", img.size, 0).save(data / "empty_mask.png")
        img.save(data / "empty_mask_fake.png")
    index = tmp_path_factory.mktemp("pixel_index") / "test_with_empty_mask.json"
    index.write_text(json.dumps([*test, {"image_path": "empty_mask_fake.png", "mask_path": "empty_mask.png",
                                         "label": 1}]))
    runs = {}
    for script in WITH_HEATMAPS:
        for threshold in (0.0, 0.5):
            out = tmp_path_factory.mktemp(f"{script}_pixels")
            run_script(script, tiny_root, *eval_sets(script, ckpts, out, index, None), f"pixel_threshold={threshold}")
            runs[script, threshold] = {"rows": json.loads((out / "predictions.json").read_text()),
                                       "csv": csv_rows(out / "metrics.csv")[-1]}
    return {"runs": runs, "index": json.loads(index.read_text())}


@pytest.mark.parametrize("threshold", [0.0, 0.5])
@pytest.mark.parametrize("script", WITH_HEATMAPS)
def test_pixel_metrics_equal_a_recomputation_from_the_ground_truth(pixel_runs, tiny_root, script, threshold):
    """false_alarm over the index's reals only, num_fake_empty_mask over its fakes only, and the fake pixel
    metrics over the fakes with a non-empty binarised mask, each recomputed from the predictions file's
    per-image counts and the ground truth itself (labels from the index, masks binarised by the rule)."""
    got = pixel_runs["runs"][script, threshold]
    index, rows, csv = pixel_runs["index"], got["rows"], got["csv"]
    assert [r["image_path"] for r in rows] == [r["image_path"] for r in index]
    reals = [row for row, rec in zip(rows, index) if rec["label"] == 0]
    fakes = [(row, rec) for row, rec in zip(rows, index) if rec["label"] == 1]
    assert reals and all(set(row) & {"tp", "fp", "fn", "pixel_f1"} == set() for row in reals), "reals are no fakes"
    empty = [row for row, rec in fakes if not _binarised(tiny_root / "data" / rec["mask_path"]).any()]
    scored = [(row, rec) for row, rec in fakes if row not in empty]
    assert len(empty) == 1 and int(csv["num_fake_empty_mask"]) == 1
    for row, rec in scored:
        gt = _binarised(tiny_root / "data" / rec["mask_path"])
        assert row["tp"] + row["fn"] == int(gt.sum()), "the row's counts are against the binarised ground truth"
        assert row["tp"] + row["fp"] + row["fn"] + int((~gt).sum()) - row["fp"] == gt.size
    f1 = [2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"]) for r, _ in scored]
    iou = [r["tp"] / (r["tp"] + r["fp"] + r["fn"]) for r, _ in scored]
    tp, fp, fn = (sum(r[k] for r, _ in scored) for k in ("tp", "fp", "fn"))
    expected = {"false_alarm": float(np.mean([r["positive_fraction"] for r in reals])),
                "pixel_f1": float(np.mean(f1)), "pixel_iou": float(np.mean(iou)),
                "ciou": tp / (tp + fp + fn), "cdice": 2 * tp / (2 * tp + fp + fn)}
    if threshold == 0.0:
        assert expected["false_alarm"] == 1.0 and 0 < expected["pixel_iou"] < 1, "every pixel is called positive"
    prefix = "head_" if script == "hybrid_eval" and "head_pixel_f1" in csv else ""
    for name, value in expected.items():
        assert float(csv[f"{prefix}{name}"]) == pytest.approx(value, abs=1e-9), name


# --------------------------------------------------------------------------- bad records in an index
def _with_faults(tiny_root: Path, folder: Path) -> tuple[Path, Path, dict[int, str]]:
    """The test index as it is, and with one entry of each structural fault placed among its records;
    returns both paths and the expected reason per faulty position."""
    test = json.loads(demo_index(tiny_root, "test").read_text())
    real, fake = next(r for r in test if r["label"] == 0), next(r for r in test if r["label"] == 1)
    label_two = f"{Path(real['image_path']).stem}_copy.jpg"
    (tiny_root / "data" / label_two).write_bytes((tiny_root / "data" / real["image_path"]).read_bytes())
    faults = [({**fake, "label": "1"}, 'label "1" is a string: write 1'),
              ({**real, "label": None}, "label is null: write 0 (real) or 1 (fake)"),
              ({"mask_path": real["mask_path"], "label": 0}, "missing key(s) 'image_path'"),
              ([real["image_path"], real["mask_path"], 0], "expected an object"),
              ({**real, "image_path": label_two, "label": 2}, "label 2 is not 0 (real) or 1 (fake)")]
    entries, expected = list(test), {}
    for k, (entry, reason) in enumerate(faults):
        position = 1 + 3 * k
        entries.insert(position, entry)
    for k, (entry, reason) in enumerate(faults):
        expected[entries.index(entry)] = reason
    clean, faulty = folder / "clean.json", folder / "faulty.json"
    clean.write_text(json.dumps(test))
    faulty.write_text(json.dumps(entries))
    return clean, faulty, expected


def test_check_data_lists_every_bad_record_of_the_index(tiny_root, tmp_path, capsys):
    _, faulty, expected = _with_faults(tiny_root, tmp_path)
    spec = importlib.util.spec_from_file_location("check_data_under_test", CODE / "check_data.py")
    check_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_data)
    code = check_data.main(["--index", str(faulty), "--data-root", str(tiny_root / "data"),
                            "--json-out", str(tmp_path / "report.json")])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"problems: {len(expected)} in {len(expected)} records ({BAD_LABEL} 1, {BAD_RECORD} 4)" in printed
    for position, reason in expected.items():
        assert re.search(rf"\] record {position} \(.*\): {re.escape(reason)}", printed), (position, reason)
    listed = json.loads((tmp_path / "report.json").read_text())["reports"][0]["problems"]
    assert sorted(p["index"] for p in listed) == sorted(expected)


def test_lora_eval_stops_on_bad_records_or_skips_them_and_scores_the_rest_the_same(tiny_root, ckpts, tmp_path):
    clean, faulty, expected = _with_faults(tiny_root, tmp_path)
    # fail (the default): the whole report, no model loaded, no result written.
    with pytest.raises(SystemExit) as stop:
        run_script("lora_eval", tiny_root, *eval_sets("lora_eval", ckpts, tmp_path / "fail", faulty, None))
    message = stop.value.code
    assert isinstance(message, str) and f"stopped: {len(expected)} problem(s) in {len(expected)} record(s)" in message
    assert all(f"record {i} " in message and reason in message for i, reason in expected.items())
    assert not (tmp_path / "fail" / "metrics.csv").exists() and not (tmp_path / "fail" / "predictions.json").exists()
    # skip: every bad record listed with its reason and counted; the good ones scored as in a clean index.
    run_script("lora_eval", tiny_root, *eval_sets("lora_eval", ckpts, tmp_path / "skip", faulty, None),
               "on_bad_sample=skip")
    run_script("lora_eval", tiny_root, *eval_sets("lora_eval", ckpts, tmp_path / "clean", clean, None))
    skipped = json.loads((tmp_path / "skip" / "skipped_test" / "skipped_records.json").read_text())
    assert skipped["num_skipped"] == len(expected)
    assert sorted(s["index"] for s in skipped["skipped"]) == sorted(expected)
    for entry in skipped["skipped"]:
        assert entry["problems"][0]["message"].startswith(expected[entry["index"]])
    row, = csv_rows(tmp_path / "skip" / "metrics.csv")
    assert int(row["num_skipped"]) == len(expected) and int(row["samples"]) == len(json.loads(clean.read_text()))
    assert f"{len(expected)} (on_bad_sample: skip" in (tmp_path / "skip" / REPORT_NAME).read_text(encoding="utf-8")
    with_skips = json.loads((tmp_path / "skip" / "predictions.json").read_text())
    assert with_skips == json.loads((tmp_path / "clean" / "predictions.json").read_text())
    clean_row, = csv_rows(tmp_path / "clean" / "metrics.csv")
    for name in ("auroc", "ap", "pixel_f1", "pixel_iou", "false_alarm"):
        assert row[name] == clean_row[name], name


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script", list(SCORES))
def test_an_index_that_stops_an_evaluation_leaves_the_earlier_run_in_place(plain_runs, tiny_root, ckpts, tmp_path,
                                                                          script):
    """The indexes are validated before the run's folder is opened: a stopped run moves nothing of the
    earlier one to previous_runs/, appends no CSV row and writes no file."""
    _, faulty, expected = _with_faults(tiny_root, tmp_path)
    out = tmp_path / "out"
    shutil.copytree(plain_runs[script]["out"], out)
    before = _files(out)
    with pytest.raises(SystemExit) as stop:
        run_script(script, tiny_root, *eval_sets(script, ckpts, out, faulty, None))
    assert f"stopped: {len(expected)} problem(s) in {len(expected)} record(s)" in stop.value.code
    assert _files(out) == before


@pytest.mark.parametrize("script", ["lora_train", "hybrid_train"])
def test_an_index_that_stops_a_training_leaves_the_earlier_run_in_place(tiny_root, ckpts, tmp_path, script):
    _, faulty, expected = _with_faults(tiny_root, tmp_path)
    out = tmp_path / "out"
    if script == "lora_train":
        shutil.copytree(ckpts["task1"].parent, out)
        sets = [f"out_dir={out}", "train_log=log.csv", "final_trained_heads=final"]
    else:
        shutil.copytree(ckpts["task3"], out)
        sets = [f"output_dir={out}", "train_log=log.csv", "lora_checkpoint=final/adapter",
                "head_checkpoint=final/heads.safetensors", "fusion_checkpoint=final/fusion.safetensors"]
    before = _files(out)
    with pytest.raises(SystemExit) as stop:
        run_script(script, tiny_root, *sets, f"ann_train={faulty}", "ann_val=null", "num_workers=0")
    assert f"stopped: {len(expected)} problem(s) in {len(expected)} record(s)" in stop.value.code
    assert _files(out) == before
