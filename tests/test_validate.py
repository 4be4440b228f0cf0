"""Whole-index validation: every problem kind in one report, and the fail / skip policies."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen_forensics.data import validate as V
from qwen_forensics.data.records import BadIndex, load_index
from qwen_forensics.data.validate import apply_bad_sample_policy, validate_records

H, W = 60, 80


def noise_jpeg_bytes(h: int, w: int, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def img(root: Path, name: str, h: int = H, w: int = W) -> str:
    return put(root, f"trainingset2/image/{name}.jpg", noise_jpeg_bytes(h, w))


def mask(root: Path, name: str, h: int = H, w: int = W) -> str:
    return put(root, f"trainingset2/spatial_localize/{name}.jpg", noise_jpeg_bytes(h, w, mode="L"))


def build_broken_index(root: Path) -> tuple[Path, dict[int, set[str]]]:
    """An index with one record per problem kind (plus two good ones); returns the expected kinds."""
    truncated = noise_jpeg_bytes(H, W, seed=3)
    entries, expected = [], {}

    def add(entry: dict, kinds: set[str]) -> None:
        if kinds:
            expected[len(entries)] = kinds
        entries.append(entry)

    add({"image_path": img(root, "good_fake__frame1"), "mask_path": mask(root, "good_fake__frame1"), "label": 1}, set())
    add({"image_path": img(root, "good_real__frame1"), "mask_path": f"{H}x{W}", "label": 0}, set())
    add({"image_path": "trainingset2/image/absent__frame1.jpg", "mask_path": f"{H}x{W}", "label": 0}, {V.MISSING_IMAGE})
    add({"image_path": put(root, "trainingset2/image/text__frame1.jpg", b"not an image"), "mask_path": f"{H}x{W}", "label": 0}, {V.UNREADABLE_IMAGE})
    add({"image_path": put(root, "trainingset2/image/cut__frame1.jpg", truncated[: len(truncated) // 2]), "mask_path": f"{H}x{W}", "label": 0}, {V.TRUNCATED_IMAGE})
    add({"image_path": img(root, "nomaskfile__frame1"), "mask_path": "trainingset2/spatial_localize/nomaskfile__frame1.jpg", "label": 1}, {V.MISSING_MASK})
    add({"image_path": img(root, "sizeasmask__frame1"), "mask_path": f"{H}x{W}", "label": 1}, {V.MISSING_MASK})
    add({"image_path": img(root, "badhxw__frame1"), "mask_path": f"{H}by{W}", "label": 0}, {V.BAD_SIZE_STRING})
    add({"image_path": img(root, "label2__frame1"), "mask_path": f"{H}x{W}", "label": 2}, {V.BAD_LABEL})
    add({"image_path": img(root, "realsize__frame1"), "mask_path": f"{H - 10}x{W}", "label": 0}, {V.SIZE_MISMATCH})
    add({"image_path": img(root, "fakesize__frame1"), "mask_path": mask(root, "fakesize__frame1", 40, 40), "label": 1}, {V.SIZE_MISMATCH})
    add({"image_path": entries[0]["image_path"], "mask_path": entries[0]["mask_path"], "label": 1}, {V.DUPLICATE})
    cut_mask = noise_jpeg_bytes(H, W, seed=4, mode="L")
    add({"image_path": img(root, "cutmask__frame1"), "mask_path": put(root, "trainingset2/spatial_localize/cutmask__frame1.jpg", cut_mask[: len(cut_mask) // 2]), "label": 1}, {V.TRUNCATED_MASK})
    add({"image_path": img(root, "textmask__frame1"), "mask_path": put(root, "trainingset2/spatial_localize/textmask__frame1.jpg", b"garbage"), "label": 1}, {V.UNREADABLE_MASK})
    # Entries that are not readable records: reported like any other problem, never coerced.
    add({"image_path": img(root, "strlabel__frame1"), "mask_path": f"{H}x{W}", "label": "1"}, {V.BAD_RECORD})
    add({"image_path": img(root, "nulllabel__frame1"), "mask_path": f"{H}x{W}", "label": None}, {V.BAD_RECORD})
    add({"mask_path": f"{H}x{W}", "label": 0}, {V.BAD_RECORD})
    add(["trainingset2/image/good_real__frame1.jpg", f"{H}x{W}", 0], {V.BAD_RECORD})
    index = root / "trainingset2" / "annotation.json"
    index.write_text(json.dumps(entries), encoding="utf-8")
    return index, expected


def test_broken_index_reports_every_problem_at_once(tmp_path):
    index, expected = build_broken_index(tmp_path)
    report = validate_records(load_index(index), tmp_path, source=str(index))
    found: dict[int, set[str]] = {}
    for p in report.problems:
        found.setdefault(p.index, set()).add(p.kind)
    assert found == expected
    all_kinds = {V.MISSING_IMAGE, V.UNREADABLE_IMAGE, V.TRUNCATED_IMAGE, V.MISSING_MASK, V.UNREADABLE_MASK, V.TRUNCATED_MASK, V.BAD_SIZE_STRING, V.BAD_LABEL, V.SIZE_MISMATCH, V.DUPLICATE, V.BAD_RECORD}
    assert set(report.problem_counts()) == all_kinds
    assert report.label_counts == {0: 6, 1: 7, 2: 1}
    # Every readable image (all but missing / unreadable) is 60x80; the truncated one still has a header size.
    assert report.size_histogram == {f"{H}x{W}": 12}
    dup = next(p for p in report.problems if p.kind == V.DUPLICATE)
    assert dup.message == "same image_path as record 0"
    reasons = [p.message for p in report.problems if p.kind == V.BAD_RECORD]
    assert reasons == ['label "1" is a string: write 1', "label is null: write 0 (real) or 1 (fake)",
                       "missing key(s) 'image_path': every record needs ['image_path', 'mask_path', 'label']",
                       'expected an object {"image_path", "mask_path", "label"}, got a list: write the record as a '
                       "JSON object"]
    assert "not readable as records: 4" in report.summary()
    mismatch = next(p for p in report.problems if p.index == 10)
    assert "is 40x40 but the image is 60x80" in mismatch.message
    text = report.summary()
    assert f"problems: {len(report.problems)} in {len(expected)} records" in text
    assert all(f"record {i} " in text for i in expected)


def test_empty_index_is_a_problem(tmp_path):
    index = tmp_path / "empty.json"
    index.write_text("[]", encoding="utf-8")
    report = validate_records(load_index(index), tmp_path, source=str(index))
    assert [(p.index, p.kind) for p in report.problems] == [(None, V.EMPTY_INDEX)]
    assert str(index) in report.problems[0].message
    with pytest.raises(BadIndex, match="no usable record"):
        apply_bad_sample_policy(report, "skip", tmp_path / "out")


def test_index_only_mode_checks_what_the_index_says(tmp_path):
    index, _ = build_broken_index(tmp_path)
    report = validate_records(load_index(index), tmp_path / "elsewhere", check_files=False)
    found = {(p.index, p.kind) for p in report.problems}
    assert found == {(6, V.MISSING_MASK), (7, V.BAD_SIZE_STRING), (8, V.BAD_LABEL), (11, V.DUPLICATE),
                     *((i, V.BAD_RECORD) for i in (14, 15, 16, 17))}
    assert report.image_sizes == {}
    # Reals' "HxW" is all the index says about sizes (the malformed one is not counted).
    assert report.size_histogram == {f"{H}x{W}": 4, f"{H - 10}x{W}": 1}


def test_fail_policy_lists_all_problems_with_file_and_hint(tmp_path):
    index, expected = build_broken_index(tmp_path)
    report = validate_records(load_index(index), tmp_path, source=str(index))
    with pytest.raises(BadIndex) as err:
        apply_bad_sample_policy(report, "fail", tmp_path / "out")
    msg = str(err.value.code)
    assert msg.startswith(report.summary()), "the whole report is the message"
    assert f"stopped: {len(report.problems)} problem(s) in {len(expected)} record(s) of {index}" in msg
    assert all(f"record {i} " in msg for i in expected)
    assert 'on_bad_sample "skip"' in msg and "check_data.py" in msg
    assert not (tmp_path / "out").exists()


def test_skip_policy_writes_skipped_list_and_returns_good(tmp_path):
    index, expected = build_broken_index(tmp_path)
    report = validate_records(load_index(index), tmp_path, source=str(index))
    good = apply_bad_sample_policy(report, "skip", tmp_path / "out")
    assert [r.index for r in good] == [0, 1]
    assert report.num_skipped == len(expected) == 16
    assert report.to_dict()["num_skipped"] == 16
    written = json.loads((tmp_path / "out" / V.SKIPPED_FILE).read_text())
    assert written["source"] == str(index) and written["num_skipped"] == 16
    assert [s["index"] for s in written["skipped"]] == sorted(expected)
    for entry in written["skipped"]:
        assert {p["kind"] for p in entry["problems"]} == expected[entry["index"]]
    raw = json.loads(index.read_text())
    assert all(entry["record"] == raw[entry["index"]] for entry in written["skipped"]), "listed as written"


def test_clean_index_passes_both_policies(tmp_path):
    entries = [
        {"image_path": img(tmp_path, "f__frame1"), "mask_path": mask(tmp_path, "f__frame1"), "label": 1},
        {"image_path": img(tmp_path, "r__frame1", 30, 20), "mask_path": "30x20", "label": 0},
    ]
    index = tmp_path / "idx.json"
    index.write_text(json.dumps(entries), encoding="utf-8")
    report = validate_records(load_index(index), tmp_path)
    assert report.ok and report.image_sizes == {0: (H, W), 1: (30, 20)}
    assert len(apply_bad_sample_policy(report, "fail", tmp_path / "a")) == 2
    assert len(apply_bad_sample_policy(report, "skip", tmp_path / "b")) == 2
    assert json.loads((tmp_path / "b" / V.SKIPPED_FILE).read_text())["num_skipped"] == 0
    with pytest.raises(ValueError, match=r"on_bad_sample must be one of \['fail', 'skip'\]"):
        apply_bad_sample_policy(report, "ignore", tmp_path)


@pytest.mark.parametrize("cut", [2, 100, 1000])
def test_truncated_jpeg_detected_at_any_cut(tmp_path, cut):
    data = noise_jpeg_bytes(240, 320, seed=5)
    path = tmp_path / "x.jpg"
    path.write_bytes(data[:-cut])
    size, failure, detail = V.inspect_image(path)
    assert (size, failure) == ((240, 320), "truncated")
    path.write_bytes(data)
    assert V.inspect_image(path) == ((240, 320), None, "")
