"""``data.formats``: the three index formats told apart by their content, read into the same Records, and
checked by the same whole-index validation and bad-sample policy (unpaired masks and a Tp/ image without
its mask included); ``check_data.py`` names the format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen_forensics.data import check_leakage
from qwen_forensics.data import validate as V
from qwen_forensics.data.formats import IMDL_FOLDER, IMDL_JSON, RECORDS
from qwen_forensics.data.masks import load_binary_mask, load_fake_truths
from qwen_forensics.data.records import BadIndex, load_index, read_index
from qwen_forensics.data.validate import apply_bad_sample_policy, validate_index
from scripts import CODE


def picture(path: Path, h: int = 6, w: int = 8, value: int = 90, mode: str = "RGB") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return str(path)


def mani_folder(root: Path, *, with_au: bool) -> Path:
    """Tp/: a (mask a.png), b (mask b_gt.png), c (mask C_Mask.png: case ignored), d (no mask); Gt/: the three
    masks and an unpaired z_gt.png; Au/ (if asked): r.jpg; plus files that are not images."""
    for stem in "abcd":
        picture(root / "Tp" / f"{stem}.jpg")
    for name in ("a.png", "b_gt.png", "C_Mask.png", "z_gt.png"):
        picture(root / "Gt" / name, value=255, mode="L")
    (root / "Tp" / "Thumbs.db").write_bytes(b"x")
    (root / "Gt" / ".DS_Store").write_bytes(b"x")
    if with_au:
        picture(root / "Au" / "r.jpg")
    return root


def test_a_folder_with_au_pairs_masks_by_stem_and_a_tp_image_without_mask_is_a_missing_mask(tmp_path):
    index = read_index(mani_folder(tmp_path / "set", with_au=True))
    assert index.format == IMDL_FOLDER
    tp, gt = tmp_path / "set" / "Tp", tmp_path / "set" / "Gt"
    got = [(Path(r.image_path).name, r.mask_path and Path(r.mask_path).name, r.label, r.size_from_image)
           for r in index.records]
    assert got == [("a.jpg", "a.png", 1, False), ("b.jpg", "b_gt.png", 1, False), ("c.jpg", "C_Mask.png", 1, False),
                   ("d.jpg", None, 1, False), ("r.jpg", None, 0, True)]
    assert index.records[0].image_path == str(tp / "a.jpg") and index.records[0].mask_path == str(gt / "a.png")
    assert index.unpaired_masks == [str(gt / "z_gt.png")]
    assert index.records[4].to_json() == [str(tmp_path / "set" / "Au" / "r.jpg"), "Negative"]
    assert any("Thumbs.db" in note for note in index.notes) and any("1 masks in Gt/" in n for n in index.notes)

    report = validate_index(index, "/elsewhere")
    assert report.format == IMDL_FOLDER and "format: IMDLBenCo ManiDataset folder" in report.summary()
    kinds = {(p.index, p.kind) for p in report.problems}
    assert kinds == {(None, V.UNPAIRED_MASK), (3, V.MISSING_MASK)}
    with pytest.raises(BadIndex, match="unpaired_mask"):
        apply_bad_sample_policy(report, "fail", tmp_path / "out")
    good = apply_bad_sample_policy(report, "skip", tmp_path / "out")
    assert [Path(r.image_path).name for r in good] == ["a.jpg", "b.jpg", "c.jpg", "r.jpg"]
    listed = json.loads((tmp_path / "out" / V.SKIPPED_FILE).read_text())
    assert listed["format"] == IMDL_FOLDER and listed["num_skipped"] == 1
    assert listed["skipped"][0]["record"] == [str(tp / "d.jpg"), None]
    assert [p["kind"] for p in listed["index_problems"]] == [V.UNPAIRED_MASK]


def test_a_folder_without_au_reads_a_tp_image_without_mask_as_authentic(tmp_path):
    index = read_index(mani_folder(tmp_path / "set", with_au=False))
    d = index.records[3]
    assert (Path(d.image_path).name, d.label, d.size_from_image, d.mask_path) == ("d.jpg", 0, True, None)
    assert any("read as authentic" in note for note in index.notes)
    report = validate_index(index, tmp_path)
    assert {p.kind for p in report.problems} == {V.UNPAIRED_MASK}
    # The authentic image's all-zero ground truth takes the image's own size.
    assert load_binary_mask(d, tmp_path).shape == (6, 8) and not load_binary_mask(d, tmp_path).any()


def test_a_folder_needs_tp_and_gt(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(BadIndex, match="needs Tp/ .images. and Gt/"):
        load_index(tmp_path)


def test_imdlbenco_pairs_resolve_against_the_json_folder(tmp_path):
    picture(tmp_path / "Tp" / "x.jpg")
    picture(tmp_path / "Gt" / "x.png", value=255, mode="L")
    picture(tmp_path / "Au" / "y.jpg", h=5, w=9)
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(tmp_path / "Au" / "y.jpg")
    entries = [["../Tp/x.jpg", "../Gt/x.png"], [absolute, "Negative"], ["only one"], [3, "Negative"],
               ["../Tp/gone.jpg", "../Gt/gone.png"]]
    (lists / "set.json").write_text(json.dumps(entries))
    index = read_index(lists / "set.json")
    assert index.format == IMDL_JSON
    fake, real, short, number, gone = index.records
    assert (fake.image_path, fake.mask_path, fake.label) == (str(tmp_path / "Tp/x.jpg"), str(tmp_path / "Gt/x.png"), 1)
    assert (real.image_path, real.label, real.size_from_image, real.to_json()) == (absolute, 0, True, entries[1])
    assert short.defect.startswith('expected a pair [image_path, mask_path or "Negative"]')
    assert short.to_json() == ["only one"]
    assert number.defect is not None and number.to_json() == [3, "Negative"]
    # The data root plays no part: every path is absolute.
    report = validate_index(index, "/nowhere")
    assert {(p.index, p.kind) for p in report.problems} == {(2, V.BAD_RECORD), (3, V.BAD_RECORD), (4, V.MISSING_IMAGE),
                                                           (4, V.MISSING_MASK)}
    assert report.size_histogram == {"6x8": 1, "5x9": 1}


def test_a_json_list_is_pairs_when_most_entries_are_arrays(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([{"image_path": "a.jpg", "mask_path": "2x2", "label": 0}, ["b.jpg", "Negative"]]))
    records = read_index(path)
    assert records.format == RECORDS and records.records[1].defect.startswith("expected an object")
    path.write_text(json.dumps([["a.jpg", "Negative"], ["b.jpg", "Negative"], {"image_path": "c.jpg"}]))
    assert read_index(path).format == IMDL_JSON
    assert read_index(path).records[2].defect.startswith("expected a pair")


def test_imdlbenco_binarisation_is_the_rgb_mean_above_127_5(tmp_path):
    """Ours: >= 0.2 * p99 of the grey mask; IMDLBenCo's: mean of R, G, B > 127.5. Grey 128 is in theirs and
    127 out; yellow (255, 255, 0) has mean 170: in; dark red (200, 0, 0) has mean 66.7: out of theirs, while
    its grey level 60 is above 0.2 x 255 and in ours."""
    rgb = np.zeros((2, 4, 3), np.uint8)
    rgb[0, 0] = 128
    rgb[0, 1] = 127
    rgb[0, 2] = (255, 255, 0)
    rgb[0, 3] = (200, 0, 0)
    rgb[1, 0] = 255
    picture(tmp_path / "Tp" / "m.png", h=2, w=4)
    picture(tmp_path / "Gt" / "m.png", h=2, w=4)
    Image.fromarray(rgb).save(tmp_path / "Gt" / "m.png")
    record = read_index(tmp_path).records[0]
    ours, imdlbenco = load_fake_truths(record, tmp_path)
    assert imdlbenco.tolist() == [[True, False, True, False], [True, False, False, False]]
    assert ours.tolist() == [[True, True, True, True], [True, False, False, False]]
    assert np.array_equal(ours, load_binary_mask(record, tmp_path))
    # A grey mask takes the shortcut (its channels are equal): the same answer as through RGB.
    Image.fromarray(rgb[..., 0]).convert("L").save(tmp_path / "Gt" / "m.png")
    assert load_fake_truths(record, tmp_path)[1].tolist() == [[True, False, True, True], [True, False, False, False]]


def test_check_data_names_the_format_and_needs_no_data_root_for_a_folder(tmp_path, capsys):
    folder = mani_folder(tmp_path / "set", with_au=True)
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_data_under_test", CODE / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--index", str(folder)]) == 1
    printed = capsys.readouterr().out
    assert "format: IMDLBenCo ManiDataset folder" in printed and "[unpaired_mask]" in printed
    assert "[missing_mask] record 3" in printed


@pytest.mark.parametrize("fixture", ["records", "pairs"])
def test_our_records_and_pairs_of_the_same_files_give_the_same_records(tmp_path, fixture):
    """The same two images as our index (relative to the data root) and as pairs: equal but for the paths'
    anchoring and how they were written."""
    picture(tmp_path / "img" / "f.jpg")
    picture(tmp_path / "msk" / "f.png", value=255, mode="L")
    picture(tmp_path / "img" / "r.jpg")
    if fixture == "records":
        entries = [{"image_path": str(tmp_path / "img/f.jpg"), "mask_path": str(tmp_path / "msk/f.png"), "label": 1},
                   {"image_path": str(tmp_path / "img/r.jpg"), "mask_path": "6x8", "label": 0}]
    else:
        entries = [["img/f.jpg", "msk/f.png"], ["img/r.jpg", "Negative"]]
    (tmp_path / "idx.json").write_text(json.dumps(entries))
    fake, real = load_index(tmp_path / "idx.json")
    assert (fake.image_path, fake.mask_path) == (str(tmp_path / "img/f.jpg"), str(tmp_path / "msk/f.png"))
    assert fake.label == 1
    assert (real.image_path, real.label) == (str(tmp_path / "img/r.jpg"), 0)
    assert validate_index(read_index(tmp_path / "idx.json"), "/unused").ok
    assert load_binary_mask(real, "/unused").shape == (6, 8)


def test_a_leakage_report_keeps_a_foreign_entry_whole(tmp_path):
    """A validation index in IMDLBenCo's pairs, checked against our training index by video group."""
    (tmp_path / "train.json").write_text(json.dumps([{"image_path": "t/3__aa__bb__frame00001.jpg", "mask_path": "m.jpg",
                                                      "label": 1}]))
    (tmp_path / "val.json").write_text(json.dumps([["/v/3__aa__bb__frame00002.jpg", "/v/m.png"],
                                                    ["/v/image__1__cc__frame00001.jpg", "Negative"]]))
    overlap = check_leakage(load_index(tmp_path / "train.json"), load_index(tmp_path / "val.json")).to_dict()
    assert overlap["records"] == [{"index": 0, "entry": ["/v/3__aa__bb__frame00002.jpg", "/v/m.png"]}]
