"""``benchmark_sets.py`` on the tiny model: the same images in the three index formats give the same rows as
each other and as ``lora_eval.py``; the model loads once for all sets; a set that fails validation is reported
in its row while the others run; the report opens in headless Chromium; and the challenge submissions of
``benchmark_sets.py``, ``lora_eval.py`` and ``hybrid_eval.py``, read back from their files, score what the
CSVs say."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from browser import Page, assert_rendered, assert_self_contained, needs_chromium
from qwen_forensics.data.formats import IMDL_FOLDER, IMDL_JSON, RECORDS
from qwen_forensics.data.masks import load_binary_mask
from qwen_forensics.data.records import Record, load_index
from qwen_forensics.evaluation import images, parse_sets
from qwen_forensics.evaluation.submission import MASK_DIR, PREDICTION_FILE, ZIP_FILE
from qwen_forensics.report.page import BENCHMARK_HEADING
from scripts import csv_rows, demo_index, run_script

pytestmark = pytest.mark.usefixtures("single_thread")
MASK_SUFFIXES = ("", "_gt", "_mask")  # the mask names of the folder, in turn: as the image, CASIA's, IMD2020's


def same_images_three_ways(tiny_root: Path, dest: Path) -> dict[str, Path]:
    """The demo test set copied into a Tp/ + Gt/ + Au/ folder (masks named after their image with each of
    :data:`MASK_SUFFIXES` in turn), the same files as IMDLBenCo pairs (paths relative to the JSON) and as our
    records (absolute paths); each lists them in the folder's order (Tp/ by name, then Au/)."""
    data = tiny_root / "data"
    records = load_index(demo_index(tiny_root, "test"))
    folder = dest / "mani"
    pairs, ours = [], []
    fakes = sorted((r for r in records if r.label == 1), key=lambda r: Path(r.image_path).name)
    for k, rec in enumerate(fakes):
        name = Path(rec.image_path).name
        mask = f"{Path(name).stem}{MASK_SUFFIXES[k % 3]}{Path(rec.mask_path).suffix}"
        for source, target in ((rec.image_path, folder / "Tp" / name), (rec.mask_path, folder / "Gt" / mask)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / source, target)
        pairs.append([f"Tp/{name}", f"Gt/{mask}"])
        ours.append({"image_path": str(folder / "Tp" / name), "mask_path": str(folder / "Gt" / mask), "label": 1})
    for rec in sorted((r for r in records if r.label == 0), key=lambda r: Path(r.image_path).name):
        name = Path(rec.image_path).name
        (folder / "Au").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / rec.image_path, folder / "Au" / name)
        pairs.append([f"Au/{name}", "Negative"])
        ours.append({"image_path": str(folder / "Au" / name), "mask_path": "x".join(map(str, rec.mask_size)),
                     "label": 0})
    (folder / "pairs.json").write_text(json.dumps(pairs))
    (dest / "ours.json").write_text(json.dumps(ours))
    return {"mani": folder, "pairs": folder / "pairs.json", "ours": dest / "ours.json"}


def broken_folder(sets: dict[str, Path], dest: Path) -> Path:
    """The folder with the mask of its first Tp/ image gone: a fake whose mask is missing (it has Au/)."""
    broken = dest / "broken"
    shutil.copytree(sets["mani"], broken)
    first = sorted((broken / "Gt").iterdir())[0]
    first.unlink()
    return broken


def submission_score(folder: Path, records: list[Record], data_root: Path) -> dict[str, float]:
    """The IJCAI 2025 DDL score recomputed from a submission's files alone (and our ground truth): AUROC of
    prediction.txt's P(fake), per-image F1 and IoU of the mask PNGs over the fakes with a non-empty mask."""
    lines = (folder / PREDICTION_FILE).read_text().splitlines()
    names = [line.rsplit(",", 1)[0] for line in lines]
    scores = [float(line.rsplit(",", 1)[1]) for line in lines]
    assert names == [Path(r.image_path).name for r in records], "one line per image, index order"
    assert all(line.rsplit(",", 1)[1] == f"{s:.4f}" for line, s in zip(lines, scores))
    f1s, ious = [], []
    for rec in records:
        gt = load_binary_mask(rec, data_root)
        with Image.open(folder / MASK_DIR / f"{Path(rec.image_path).stem}.png") as picture:
            assert picture.mode == "L" and picture.size == (gt.shape[1], gt.shape[0])
            mask = np.asarray(picture)
        assert set(np.unique(mask)) <= {0, 255}
        if rec.label == 1 and gt.any():
            pred = mask == 255
            tp, fp, fn = int((pred & gt).sum()), int((pred & ~gt).sum()), int((~pred & gt).sum())
            f1s.append(2 * tp / (2 * tp + fp + fn))
            ious.append(tp / (tp + fp + fn))
    with zipfile.ZipFile(folder / ZIP_FILE) as archive:
        assert sorted(archive.namelist()) == sorted([PREDICTION_FILE, *(f"{MASK_DIR}/{Path(r.image_path).stem}.png"
                                                                          for r in records)])
        assert archive.read(PREDICTION_FILE) == (folder / PREDICTION_FILE).read_bytes()
    auroc = roc_auc_score([r.label for r in records], scores)
    return {"auroc": auroc, "pixel_f1": float(np.mean(f1s)), "pixel_iou": float(np.mean(ious)),
            "score": (auroc + float(np.mean(f1s)) + float(np.mean(ious))) / 3}


def assert_submission_scores_as_the_csv(folder: Path, records: list[Record], data_root: Path, row: dict,
                                        p_fake: list[float], auroc_key: str = "auroc") -> None:
    """The score from the files equals the CSV's. P(fake) is written to 4 decimals, which could only move the
    AUROC by tying two scores that differ: the check first makes sure it did not (``p_fake``: full precision)."""
    rounded = [round(p, 4) for p in p_fake]
    assert len(set(rounded)) == len(set(p_fake)), "rounding to 4 decimals tied scores: the AUROC may differ"
    got = submission_score(folder, records, data_root)
    for key in ("pixel_f1", "pixel_iou", "auroc", "score"):
        assert got[key] == pytest.approx(float(row[auroc_key if key == "auroc" else key]), abs=1e-12), key


@pytest.fixture(scope="module")
def bench(tiny_root, task1_ckpt, tmp_path_factory) -> dict:
    """benchmark_sets.py with the Task 1 checkpoint over the demo test set in three formats, our index as the
    user has it, and a broken folder; thresholds from the demo validation index; loads counted."""
    work = tmp_path_factory.mktemp("bench")
    sets = same_images_three_ways(tiny_root, work)
    sets["broken"] = broken_folder(sets, work)
    sets["demo"] = demo_index(tiny_root, "test")
    out, submission = work / "out", work / "submission"
    loads = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("load_vision_tower", "load_model"):
            original = getattr(images, name)
            patch.setattr(images, name, lambda *a, _name=name, _original=original, **k: (loads.append(_name),
                                                                                          _original(*a, **k))[1])
        printed = run_script("benchmark_sets", None, argv=[
            "--ckpt", str(task1_ckpt), *(a for name, path in sets.items() for a in ("--set", f"{name}={path}")),
            "--val", f"demo_val={demo_index(tiny_root, 'val')}", "--data-root", str(tiny_root / "data"),
            "--out", str(out), "--export-submission", str(submission), "--batch-size", "5", "--num-workers", "0"])
    rows = {row["set"]: row for row in csv_rows(out / "benchmark.csv")}
    return {"out": out, "submission": submission, "sets": sets, "printed": printed, "loads": loads, "rows": rows}


def test_three_formats_one_model_load_and_the_same_rows(bench, tiny_root):
    rows = bench["rows"]
    assert bench["loads"] == ["load_vision_tower"], "the model loads once for every set"
    assert list(rows) == ["mani", "pairs", "ours", "broken", "demo"], "one row per set, in the order given"
    assert {name: rows[name]["format"] for name in rows} == {"mani": IMDL_FOLDER, "pairs": IMDL_JSON, "ours": RECORDS,
                                                            "broken": IMDL_FOLDER, "demo": RECORDS}
    assert [rows["mani"][k] for k in ("n_images", "n_fake", "n_skipped", "error")] == ["12", "6", "0", ""]
    metrics = [k for k in rows["mani"] if k not in ("set", "format", "index")]
    for name in ("pairs", "ours", "demo"):
        assert {k: rows[name][k] for k in metrics} == {k: rows["mani"][k] for k in metrics}, name
    # The same files: the same per-image rows, whatever the format (our index as the user wrote it has the same
    # images at other paths, in another order).
    predictions = {name: json.loads((bench["out"] / f"predictions_{name}.json").read_text())
                   for name in ("mani", "pairs", "ours", "demo")}
    assert predictions["mani"] == predictions["pairs"] == predictions["ours"]
    def by_name(rows: list[dict]) -> dict:
        return {Path(r["image_path"]).name: {k: v for k, v in r.items() if k != "image_path"} for r in rows}
    assert by_name(predictions["mani"]) == by_name(predictions["demo"])
    assert all(math.isfinite(float(rows["mani"][k])) for k in ("pixel_auroc", "imdlbenco_pixel_f1", "threshold"))
    assert "[speed] evaluation: 54 images" in bench["printed"], "4 sets of 12 and the 6 validation images"
    for name, fmt in (("mani", "IMDLBenCo ManiDataset folder"), ("pairs", "IMDLBenCo JsonDataset"),
                      ("ours", "our index")):
        assert f"[data] {bench['sets'][name]}: {fmt}" in bench["printed"]


def test_a_set_failing_validation_is_reported_in_its_row_and_the_run_goes_on(bench):
    row = bench["rows"]["broken"]
    assert row["n_images"] == "0" and "1 problem(s) in 1 record(s)" in row["error"] and row["auroc"] == ""
    assert "[missing_mask] record 0" in bench["printed"] and "set broken" in bench["printed"]
    assert "broken: not evaluated" in bench["printed"] and not (bench["out"] / "predictions_broken.json").exists()


def test_the_rows_equal_lora_eval_on_the_same_index(bench, tiny_root, task1_ckpt, tmp_path):
    out = tmp_path / "eval"
    run_script("lora_eval", tiny_root, f"ckpt_path={task1_ckpt}", f"out_dir={out}", f"csv_path={out / 'metrics.csv'}",
               f"output_json={out / 'predictions.json'}", f"ann_val={demo_index(tiny_root, 'val')}", "num_workers=0",
               "batch_size=5", "num_heatmaps=0")
    evaluated = csv_rows(out / "metrics.csv")[-1]
    row = bench["rows"]["demo"]
    shared = [k for k in row if k in evaluated and k not in ("index", "images_per_s")]
    assert len(shared) > 25 and "imdlbenco_pixel_iou" in shared and "pixel_f1_pooled" in shared
    assert {k: row[k] for k in shared} == {k: evaluated[k] for k in shared}
    assert evaluated["format"] == RECORDS
    assert json.loads((out / "predictions.json").read_text()) == json.loads(
        (bench["out"] / "predictions_demo.json").read_text())


def test_benchmark_submissions_score_what_the_table_says(bench, tiny_root):
    for name in ("mani", "demo"):
        records = load_index(bench["sets"][name])
        p_fake = [r["p_fake"] for r in json.loads((bench["out"] / f"predictions_{name}.json").read_text())]
        assert_submission_scores_as_the_csv(bench["submission"] / name, records, tiny_root / "data",
                                            bench["rows"][name], p_fake)
    assert not (bench["submission"] / "broken").exists()


def test_the_report_has_the_table_on_top_and_a_section_per_set(bench):
    page_text = (bench["out"] / "report.html").read_text(encoding="utf-8")
    page = Page(page_text)
    assert [h for tag, h in page.headings if tag == "h2"] == [BENCHMARK_HEADING, "mani", "pairs", "ours", "broken",
                                                              "demo"]
    table = page.table(first_header="set")
    header = table[0]
    assert header[:5] == ["set", "format", "n_images", "n_fake", "n_skipped"] and "pixel_auroc" in header
    assert [r[0] for r in table[1:]] == ["mani", "pairs", "ours", "broken", "demo"]
    # Best per column: every evaluated set ties (the same images), so all four are marked, the broken one not.
    auroc = header.index("auroc")
    assert page_text.count('<td class="best">') >= 4 * (len(header) - 6) and table[4][auroc] == "—"
    assert len(assert_self_contained(page_text)) == 4, "ROC / PR curves of each evaluated set"


@needs_chromium
def test_the_report_renders_in_chromium(bench, tmp_path):
    assert_rendered(tmp_path, bench["out"] / "report.html", [BENCHMARK_HEADING, "mani", "pairs", "ours", "broken",
                                                             "demo"], min_blue=500)


def test_lora_eval_exports_a_submission_that_scores_its_csv_row(tiny_root, task1_ckpt, tmp_path):
    out = tmp_path / "eval"
    printed = run_script("lora_eval", None, argv=[
        "--root", str(tiny_root), "--set", f"ckpt_path={task1_ckpt}", "--set", f"out_dir={out}",
        "--set", "num_workers=0", "--set", "num_heatmaps=0", "--set", "pixel_threshold=0.4",
        "--export-submission", "submission"])
    assert f"submission: {out / 'submission' / ZIP_FILE}" in printed
    records = load_index(demo_index(tiny_root, "test"))
    p_fake = [r["p_fake"] for r in json.loads((out / "predictions.json").read_text())]
    assert_submission_scores_as_the_csv(out / "submission", records, tiny_root / "data",
                                        csv_rows(out / "metrics.csv")[-1], p_fake)


def test_hybrid_eval_exports_the_lm_verdict_and_the_heads_masks(tiny_root, task3_run, tmp_path):
    out, final = tmp_path / "eval", task3_run / "final"
    run_script("hybrid_eval", None, argv=[
        "--root", str(tiny_root), "--set", f"out_dir={out}", "--set", f"lora_checkpoint={final / 'adapter'}",
        "--set", f"head_checkpoint={final / 'heads.safetensors'}",
        "--set", f"fusion_checkpoint={final / 'fusion.safetensors'}",
        "--set", "num_workers=0", "--set", "num_heatmaps=0", "--set", "torch_dtype=float32",
        "--export-submission", str(tmp_path / "sub")])
    row = csv_rows(out / "metrics.csv")[-1]
    records = load_index(demo_index(tiny_root, "test"))
    predictions = json.loads((out / "predictions.json").read_text())
    assert_submission_scores_as_the_csv(tmp_path / "sub", records, tiny_root / "data", row,
                                        [r["p_fake_lm"] for r in predictions], auroc_key="lm_auroc")
    lines = (tmp_path / "sub" / PREDICTION_FILE).read_text().splitlines()
    assert [float(line.rsplit(",", 1)[1]) for line in lines] == [round(r["p_fake_lm"], 4) for r in predictions]


def test_lora_eval_reads_a_folder_and_skips_the_tp_image_without_its_mask(bench, tiny_root, task1_ckpt, tmp_path):
    """The broken folder given to an evaluation script as it is: under "skip" its fake without a mask is listed and
    left out, the other eleven images are evaluated, and the CSV row says which format the index was."""
    out = tmp_path / "eval"
    printed = run_script("lora_eval", tiny_root, f"ckpt_path={task1_ckpt}", f"out_dir={out}",
                         f"ann_test={bench['sets']['broken']}", "on_bad_sample=skip", "num_workers=0", "num_heatmaps=0")
    row = csv_rows(out / "metrics.csv")[-1]
    assert (row["format"], row["samples"], row["num_skipped"]) == (IMDL_FOLDER, "11", "1")
    skipped = json.loads((out / "skipped_test" / "skipped_records.json").read_text())
    assert skipped["format"] == IMDL_FOLDER and [p["kind"] for p in skipped["skipped"][0]["problems"]] == ["missing_mask"]
    assert skipped["skipped"][0]["record"][1] is None and f"[data] {bench['sets']['broken']}: IMDLBenCo" in printed


def test_the_set_list_from_a_file_and_the_command_line(tmp_path, monkeypatch):
    sets_file = tmp_path / "lists" / "sets.json"
    sets_file.parent.mkdir()
    sets_file.write_text(json.dumps({"casia": "../CASIA2", "ours": "/root/autodl-tmp/data/testset2/annotation.json"}))
    monkeypatch.chdir(tmp_path)
    got = parse_sets(["cov=coverage/pairs.json"], sets_file, "/work/me")
    assert got == {"casia": str(tmp_path / "CASIA2"), "ours": "/work/me/data/testset2/annotation.json",
                   "cov": str(tmp_path / "coverage" / "pairs.json")}
    for specs, message in ((["a=x", "a=y"], "given twice"), (["val=x"], "not 'val'"), (["a b=x"], "use letters"),
                           (["a"], "write NAME=PATH"), ([], "no set to evaluate")):
        with pytest.raises(ValueError, match=message):
            parse_sets(specs, None, None)
