"""Synthetic demo data: exact layout, record format, masks, video-grouped split, determinism, and
that the manipulations survive shrinking to the model's input size."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from qwen_forensics.data.masks import binarize_mask
from qwen_forensics.data.records import load_index, video_key
from qwen_forensics.data.validate import validate_records
from qwen_forensics.demo.dataset import DEFAULT_SIZES, MARKER_NAME, STRONG_KINDS, make_demo_dataset

REPO = Path(__file__).resolve().parents[1]
FAKE_NAME = re.compile(r"^([1-9]|1[0-5])__[0-9a-f]{32}__[0-9a-f]{32}__frame\d{5}\.jpg$")
REAL_NAME = re.compile(r"^image__\d+__[0-9a-f]{32}__frame\d{5}\.jpg$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    summary = make_demo_dataset(root)
    return root / "data", summary


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _all_records(data: Path) -> list[dict]:
    return _load(data / "trainingset2" / "annotation.json") + _load(data / "testset2" / "annotation.json")


def _binarise(mask: Image.Image) -> np.ndarray:
    return binarize_mask(np.asarray(mask.convert("L")))


def _shrink(img: Image.Image, long_side: int = 224) -> Image.Image:
    scale = long_side / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)


def _region_contrast(img: Image.Image, mask: Image.Image) -> tuple[float, float, int]:
    """How far the masked region stands out from a band of background around it.

    Mean over RGB of |mean inside - mean band| + |std inside - std band|, in grey levels: the mean
    term catches colour casts, the std term catches texture (checkerboards) whose mean may equal
    the background's. Inside is the binarised mask eroded by 1 px, the band is 3..7 px outside it.
    Returns (score, std inside averaged over RGB, pixels inside).
    """
    region = Image.fromarray(_binarise(mask).astype(np.uint8) * 255)
    inner = np.asarray(region.filter(ImageFilter.MinFilter(3))) > 0
    band = (np.asarray(region.filter(ImageFilter.MaxFilter(15))) > 0) & ~(
        np.asarray(region.filter(ImageFilter.MaxFilter(5))) > 0)
    px = np.asarray(img.convert("RGB"), dtype=np.float32)
    a, b = px[inner], px[band]
    score = np.abs(a.mean(0) - b.mean(0)).mean() + np.abs(a.std(0) - b.std(0)).mean()
    return float(score), float(a.std(0).mean()), int(inner.sum())


def test_summary_and_exact_layout(demo):
    data, summary = demo
    assert summary == {
        "data_dir": str(data),
        "train_records": 120,
        "train_idx": 96,
        "val_idx": 24,
        "test_records": 40,
        "videos": 40,
        "kinds": {"checker": 48, "blur_shift": 16, "copy_move": 12, "colour_shift": 4},
    }
    assert {p.name for p in data.iterdir()} == {"trainingset2", "testset2", MARKER_NAME}
    assert {p.name for p in (data / "trainingset2").iterdir()} == {
        "image", "spatial_localize", "annotation.json", "train_idx.json", "val_idx.json"}
    assert {p.name for p in (data / "testset2").iterdir()} == {
        "image", "spatial_localize", "annotation.json"}
    for split in ("trainingset2", "testset2"):
        records = _load(data / split / "annotation.json")
        names = {Path(r["image_path"]).name for r in records}
        fake_names = {Path(r["image_path"]).name for r in records if r["label"] == 1}
        assert {p.name for p in (data / split / "image").iterdir()} == names
        assert {p.name for p in (data / split / "spatial_localize").iterdir()} == fake_names
        assert len(names) == len(records)
        assert sum(r["label"] for r in records) * 2 == len(records)
        for r in records:
            assert set(r) == {"image_path", "mask_path", "label"}
            assert r["image_path"] == f"{split}/image/{Path(r['image_path']).name}"
            name = Path(r["image_path"]).name
            if r["label"] == 1:
                assert FAKE_NAME.match(name), name
                assert r["mask_path"] == f"{split}/spatial_localize/{name}"
            else:
                assert r["label"] == 0
                assert REAL_NAME.match(name), name
                assert re.fullmatch(r"\d+x\d+", r["mask_path"])


def test_images_masks_and_sizes(demo):
    data, _ = demo
    sizes, frames_per_video = set(), {}
    for r in _all_records(data):
        with Image.open(data / r["image_path"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            w, h = img.size
        sizes.add((h, w))
        frames_per_video[video_key(r["image_path"])] = frames_per_video.get(video_key(r["image_path"]), 0) + 1
        if r["label"] == 1:
            with Image.open(data / r["mask_path"]) as mask:
                assert mask.format == "JPEG"
                assert mask.size == (w, h)
                soft = np.asarray(mask.convert("L"))
            # Soft: intermediate grey levels exist (feathered edges, graded change), not just 0/255.
            assert ((soft > 20) & (soft < 235)).any()
            assert _binarise(Image.fromarray(soft)).any()
        else:
            assert r["mask_path"] == f"{h}x{w}"
    assert sizes == set(DEFAULT_SIZES)
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes) and any(h == w for h, w in sizes)
    assert set(frames_per_video.values()) == {4}


def test_the_data_layer_accepts_every_index(demo):
    data, _ = demo
    for index in ("trainingset2/annotation.json", "trainingset2/train_idx.json",
                  "trainingset2/val_idx.json", "testset2/annotation.json"):
        report = validate_records(load_index(data / index), data, source=index, workers=1)
        assert report.ok, [str(p) for p in report.problems]
        assert report.label_counts[0] == report.label_counts[1] > 0


def test_split_is_grouped_by_video_and_balanced(demo):
    data, _ = demo
    train_all = _load(data / "trainingset2" / "annotation.json")
    train = _load(data / "trainingset2" / "train_idx.json")
    val = _load(data / "trainingset2" / "val_idx.json")
    test = _load(data / "testset2" / "annotation.json")
    as_set = lambda recs: {json.dumps(r, sort_keys=True) for r in recs}
    assert as_set(train) | as_set(val) == as_set(train_all)
    assert not as_set(train) & as_set(val)
    train_videos = {video_key(r["image_path"]) for r in train}
    val_videos = {video_key(r["image_path"]) for r in val}
    test_videos = {video_key(r["image_path"]) for r in test}
    assert not train_videos & val_videos
    assert not (train_videos | val_videos) & test_videos
    for recs in (train, val, test):
        assert sum(r["label"] for r in recs) * 2 == len(recs)


def test_manipulations_survive_shrinking_to_224(demo):
    """Shrunk to 224 on the long side, the strong kinds stand out by >= 40 grey levels while the
    same statistic on real frames (with a borrowed fake mask) stays <= 25; checkerboards keep their
    texture (std inside >= 30: 1-px cells blur to <= 9.1); every region keeps >= 2% of the shrunk
    frame. Measured over seeds 0-4: strong >= 47.1, control <= 21.3, checker std >= 42.1,
    region >= 3.8% (seed 0 is what runs here)."""
    data, _ = demo
    kinds = _load(data / MARKER_NAME)["kinds"]
    records = _all_records(data)
    fakes = [r for r in records if r["label"] == 1]
    reals = [r for r in records if r["label"] == 0]
    strong = [r for r in fakes if kinds[r["image_path"]] in STRONG_KINDS]
    assert len(strong) / len(fakes) >= 0.75
    for r in fakes:
        img = _shrink(Image.open(data / r["image_path"]))
        score, std_inside, area = _region_contrast(img, _shrink(Image.open(data / r["mask_path"])))
        assert area >= 0.02 * img.width * img.height, r["image_path"]
        if r in strong:
            assert score >= 40.0, (r["image_path"], kinds[r["image_path"]], score)
        if kinds[r["image_path"]] == "checker":
            assert std_inside >= 30.0, (r["image_path"], std_inside)
    for real, fake in zip(reals, fakes):
        img = _shrink(Image.open(data / real["image_path"]))
        borrowed = Image.open(data / fake["mask_path"]).convert("L").resize(img.size, Image.BILINEAR)
        score, _, _ = _region_contrast(img, borrowed)
        assert score <= 25.0, (real["image_path"], score)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(n_train=16, n_test=8, frames_per_video=2, sizes=((240, 320), (320, 240)))
    make_demo_dataset(tmp_path / "a", seed=3, **kwargs)
    make_demo_dataset(tmp_path / "b", seed=3, **kwargs)
    make_demo_dataset(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_tree_hashes(tmp_path / x) for x in "abc")
    assert len(a) == 1 + 4 + 8 + 4 + 16 + 8  # marker, 4 JSON, fake masks, images
    assert a == b
    assert not set(a.values()) & set(c.values())


def test_overwrite_only_replaces_a_synthetic_set(tmp_path):
    kwargs = dict(n_train=8, n_test=2, frames_per_video=2, sizes=((240, 320),))
    make_demo_dataset(tmp_path, **kwargs)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_dataset(tmp_path, **kwargs)
    first = _tree_hashes(tmp_path)
    make_demo_dataset(tmp_path, seed=1, overwrite=True, **kwargs)
    assert _tree_hashes(tmp_path) != first
    make_demo_dataset(tmp_path, overwrite=True, **kwargs)
    assert _tree_hashes(tmp_path) == first

    real = tmp_path / "user"
    (real / "data" / "trainingset2").mkdir(parents=True)
    keep = real / "data" / "trainingset2" / "annotation.json"
    keep.write_text("[]")
    with pytest.raises(FileExistsError, match="refusing to delete"):
        make_demo_dataset(real, overwrite=True, **kwargs)
    assert keep.read_text() == "[]"


@pytest.mark.parametrize("bad, message", [
    (dict(n_train=121), "n_train must be even"),
    (dict(n_train=12), "n_train must be even and >= 16"),
    (dict(n_test=3), "n_test must be even"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(sizes=((32, 320),)), "too small"),
    (dict(kind_weights={"splice": 1.0}), "valid kinds"),
])
def test_bad_arguments_fail_clearly(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path, **bad)
    assert not (tmp_path / "data").exists()


def test_cli_writes_the_set_and_uses_the_root_override(tmp_path):
    script = REPO / "Qwen_code" / "make_demo_data.py"
    args = [sys.executable, str(script), "--n-train", "8", "--n-test", "2", "--frames-per-video", "2"]
    env_root = tmp_path / "from_env"
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "", "QWEN_FORENSICS_ROOT": str(env_root)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["train_records"] == 8
    assert (env_root / "data" / "testset2" / "annotation.json").is_file()

    again = subprocess.run(args + ["--root", str(env_root)], capture_output=True, text=True)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr


def test_draw_data_layout_writes_the_picture_from_any_cwd(tmp_path):
    script = REPO / "Qwen_code" / "draw_data_layout.py"
    out = tmp_path / "layout.png"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as img, Image.open(REPO / "image.png") as shipped:
        assert img.format == "PNG" and img.size == shipped.size == (1500, 1051)
        # Mostly white page with dark text: the drawing happened, not a blank canvas.
        grey = np.asarray(img.convert("L"))
        assert 0.005 < (grey < 100).mean() < 0.1
