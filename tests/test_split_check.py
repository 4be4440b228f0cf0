"""Video-group split (library and make_split.py) and check_data.py's leakage report."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen_forensics.data.leakage import check_leakage
from qwen_forensics.data.records import Record, load_index, video_overlap
from qwen_forensics.data.split import split_by_video

REPO = Path(__file__).resolve().parents[1]
CHECK_DATA = REPO / "Qwen_code" / "check_data.py"
MAKE_SPLIT = REPO / "Qwen_code" / "make_split.py"


def synthetic_records(seed: int = 0) -> list[Record]:
    """Videos of 1..6 frames, 60% real videos, so balancing has something to do."""
    rng = np.random.default_rng(seed)
    records = []
    for v in range(400):
        label = int(rng.random() < 0.4)
        stem = f"{v % 15 + 1}__{v:032x}__{v + 7:032x}" if label else f"image__{v % 30}__{v:032x}"
        for f in range(int(rng.integers(1, 7))):
            name = f"trainingset2/image/{stem}__frame{f:05d}.jpg"
            if label:
                records.append(Record(name, name.replace("/image/", "/spatial_localize/"), None, 1, len(records)))
            else:
                records.append(Record(name, None, (720, 1280), 0, len(records)))
    return records


def test_split_by_video_is_grouped_balanced_and_seeded():
    records = synthetic_records()
    train, val = split_by_video(records, 0.15, seed=3)
    assert check_leakage(train, val).ok and video_overlap(train, val).num_records == 0
    assert sorted(r.index for r in train + val) == list(range(len(records)))
    assert abs(len(val) - 0.15 * len(records)) <= 3
    total = Counter(r.label for r in records)
    got = Counter(r.label for r in val)
    for label in (0, 1):
        assert abs(got[label] - 0.15 * total[label]) <= 3
    again = split_by_video(list(reversed(records)), 0.15, seed=3)[1]
    assert {r.index for r in again} == {r.index for r in val}
    other = split_by_video(records, 0.15, seed=4)[1]
    assert {r.index for r in other} != {r.index for r in val}


def test_split_by_video_rejects_bad_arguments():
    records = synthetic_records()
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_by_video(records, 1.0)
    one_video = [r for r in records if r.video == records[0].video]
    with pytest.raises(ValueError, match="at least 2 video groups"):
        split_by_video(one_video, 0.5)


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_make_split_then_check_data_finds_no_overlap(tmp_path):
    annotation = tmp_path / "data" / "trainingset2" / "annotation.json"
    annotation.parent.mkdir(parents=True)
    raw = [r.to_json() for r in synthetic_records(1)]
    annotation.write_text(json.dumps(raw), encoding="utf-8")

    done = run(MAKE_SPLIT, "--annotation", str(annotation), "--seed", "7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    train_path, val_path = annotation.parent / "train_idx.json", annotation.parent / "val_idx.json"
    train, val = load_index(train_path), load_index(val_path)
    assert len(train) + len(val) == len(raw)
    assert sorted(json.dumps(r.to_json()) for r in train + val) == sorted(json.dumps(r) for r in raw)
    assert {r.video for r in train}.isdisjoint({r.video for r in val})
    assert check_leakage(train, val).ok
    assert f"-> {val_path}" in done.stdout

    again = run(MAKE_SPLIT, "--annotation", str(annotation), cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr

    check = run(CHECK_DATA, "--index", str(train_path), "--other-index", str(val_path), "--no-files", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"video overlap: 0 of {len(val)} records" in check.stdout


def save_jpeg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path, quality=90)


def test_check_data_reports_leaky_pair(tmp_path):
    data = tmp_path / "data"
    entries = {}
    for name, h, w in [("image__1__aaa__frame00001", 36, 64), ("image__1__aaa__frame00002", 36, 64), ("image__1__aaa__frame00003", 36, 64),
                       ("image__2__bbb__frame00001", 48, 64), ("image__3__ccc__frame00001", 48, 64)]:
        rel = f"trainingset2/image/{name}.jpg"
        save_jpeg(data / rel, h, w)
        entries[name] = {"image_path": rel, "mask_path": f"{h}x{w}", "label": 0}
    fake = "4__" + "d" * 32 + "__" + "e" * 32 + "__frame00010"
    save_jpeg(data / f"trainingset2/image/{fake}.jpg", 48, 64)
    save_jpeg(data / f"trainingset2/spatial_localize/{fake}.jpg", 48, 64)
    entries[fake] = {"image_path": f"trainingset2/image/{fake}.jpg", "mask_path": f"trainingset2/spatial_localize/{fake}.jpg", "label": 1}
    train = [entries["image__1__aaa__frame00001"], entries["image__2__bbb__frame00001"], entries[fake]]
    val = [entries["image__1__aaa__frame00002"], entries["image__1__aaa__frame00003"], entries["image__3__ccc__frame00001"]]
    (data / "trainingset2" / "train_idx.json").write_text(json.dumps(train), encoding="utf-8")
    (data / "trainingset2" / "val_idx.json").write_text(json.dumps(val), encoding="utf-8")

    report_path = tmp_path / "out" / "report.json"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    done = run(CHECK_DATA, "--index", str(data / "trainingset2" / "train_idx.json"), "--other-index", str(data / "trainingset2" / "val_idx.json"),
               "--data-root", str(data), "--json-out", str(report_path), cwd=workdir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "video overlap: 2 of 3 records" in done.stdout and "from 1 of 2 video groups" in done.stdout
    assert "image__1__aaa" in done.stdout and "problems: none" in done.stdout
    assert "36x64: 1" in done.stdout and "48x64: 2" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["overlap"]["num_records"] == 2 and [g["label"] for g in report["overlap"]["groups"]] == ["image__1__aaa"]
    assert report["overlap"]["by_clip_name"]["videos"] == ["image__1__aaa"]
    assert [r["index"] for r in report["overlap"]["records"]] == [0, 1]
    assert report["reports"][0]["label_counts"] == {"0": 2, "1": 1}
    assert report["reports"][0]["size_histogram"] == {"48x64": 2, "36x64": 1}

    missing_root = run(CHECK_DATA, "--index", str(data / "trainingset2" / "train_idx.json"), cwd=workdir)
    assert missing_root.returncode == 2 and "--no-files" in missing_root.stderr
