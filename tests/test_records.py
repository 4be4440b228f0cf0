"""Index parsing, video key, leakage check, and the user's real index files at full scale."""
import json
from pathlib import Path

import pytest

from qwen_forensics.data.records import BadIndex, Record, load_index, parse_size, save_index, video_key, video_overlap
from qwen_forensics.data.validate import validate_records
from scripts import SHARED_INDEX, needs_real_index

FAKE = "3__f03a785c6a852b75a7ede5cee765e5b7__808351070d513c9621d5de2da2ce9600__frame00128.jpg"
REAL = "image__19__aba83642ef85fbf03be9dda3c4f99edc__frame00001.jpg"


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_video_key_is_file_name_before_frame():
    assert video_key(f"trainingset2/image/{FAKE}") == "3__f03a785c6a852b75a7ede5cee765e5b7__808351070d513c9621d5de2da2ce9600"
    assert video_key(f"testset2/image/{REAL}") == "image__19__aba83642ef85fbf03be9dda3c4f99edc"
    assert video_key("a/b/still_photo.png") == "still_photo"


def test_parse_size():
    assert parse_size("720x1280") == (720, 1280)
    for bad in ("720X1280", "720 x 1280", "720x", "0x5", "-1x5", "720x1280x3", "abc"):
        assert parse_size(bad) is None, bad


def test_load_index_parses_fakes_and_reals(tmp_path):
    path = write_json(
        tmp_path / "idx.json",
        [
            {"image_path": f"trainingset2/image/{FAKE}", "mask_path": f"trainingset2/spatial_localize/{FAKE}", "label": 1},
            {"image_path": f"trainingset2/image/{REAL}", "mask_path": "720x1280", "label": 0},
        ],
    )
    fake, real = load_index(path)
    assert fake == Record(f"trainingset2/image/{FAKE}", f"trainingset2/spatial_localize/{FAKE}", None, 1, 0)
    assert real == Record(f"trainingset2/image/{REAL}", None, (720, 1280), 0, 1)
    assert real.video == "image__19__aba83642ef85fbf03be9dda3c4f99edc"


def test_semantic_problems_stay_representable(tmp_path):
    path = write_json(
        tmp_path / "idx.json",
        [
            {"image_path": "a__frame1.jpg", "mask_path": "720by1280", "label": 0},
            {"image_path": "b__frame1.jpg", "mask_path": "720x1280", "label": 2},
            {"image_path": "c__frame1.jpg", "mask_path": None, "label": 1},
            {"image_path": "d__frame1.jpg", "mask_path": "", "label": 1},
        ],
    )
    bad_size, bad_label, null_mask, empty_mask = load_index(path)
    assert (bad_size.mask_path, bad_size.mask_size) == ("720by1280", None)
    assert (bad_label.label, bad_label.mask_size) == (2, (720, 1280))
    assert (null_mask.mask_path, null_mask.mask_size) == (None, None)
    assert (empty_mask.mask_path, empty_mask.mask_size) == (None, None)


def test_a_file_that_is_not_an_index_is_one_error_naming_it(tmp_path):
    path = write_json(tmp_path / "broken_idx.json", {"image_path": "x"})
    with pytest.raises(BadIndex) as err:
        load_index(path)
    assert str(path) in str(err.value.code) and "top level must be a JSON list" in str(err.value.code)
    assert "fix the index file" in str(err.value.code)


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("not an object", 'expected an object {"image_path", "mask_path", "label"}, got "not an object"'),
        ({"image_path": "x", "label": 0}, "missing key(s) 'mask_path'"),
        ({"mask_path": "1x1", "label": 0}, "missing key(s) 'image_path'"),
        ({"image_path": 5, "mask_path": "1x1", "label": 0}, "image_path 5 is not a string"),
        ({"image_path": "a", "mask_path": 7, "label": 1}, "mask_path 7 is not a string"),
        ({"image_path": "a", "mask_path": "1x1", "label": "0"}, 'label "0" is a string: write 0'),
        ({"image_path": "a", "mask_path": "m.jpg", "label": "1"}, 'label "1" is a string: write 1'),
        ({"image_path": "a", "mask_path": "m.jpg", "label": "fake"}, 'label "fake" is a string: write 0 (real) or 1 (fake)'),
        ({"image_path": "a", "mask_path": "1x1", "label": None}, "label is null: write 0 (real) or 1 (fake)"),
        ({"image_path": "a", "mask_path": "1x1", "label": True}, "label true is a boolean: write 1"),
        ({"image_path": "a", "mask_path": "1x1", "label": 1.0}, "label 1.0 is not an integer: write 1"),
    ],
)
def test_a_defective_entry_is_a_record_with_its_reason_and_nothing_coerced(tmp_path, entry, reason):
    good = {"image_path": "b__frame1.jpg", "mask_path": "2x2", "label": 0}
    first, bad, last = load_index(write_json(tmp_path / "idx.json", [good, entry, good]))
    assert first.defect is None and last.defect is None and (first.index, last.index) == (0, 2)
    assert bad.index == 1 and bad.defect.startswith(reason), bad.defect
    assert bad.label == -1 and bad.to_json() == entry, "the entry is kept as written, never coerced"


def test_load_index_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "idx.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(BadIndex, match="not valid JSON"):
        load_index(path)
    with pytest.raises(BadIndex, match="does not exist"):
        load_index(tmp_path / "absent.json")


def test_save_index_round_trip(tmp_path):
    original = [
        {"image_path": "trainingset2/image/a__frame1.jpg", "mask_path": "trainingset2/spatial_localize/a__frame1.jpg", "label": 1},
        {"image_path": "trainingset2/image/b__frame1.jpg", "mask_path": "360x640", "label": 0},
    ]
    records = load_index(write_json(tmp_path / "in.json", original))
    save_index(records, tmp_path / "out" / "idx.json")
    assert json.loads((tmp_path / "out" / "idx.json").read_text()) == original


def test_video_overlap_counts_records_and_videos():
    def rec(name, i):
        return Record(f"image/{name}.jpg", None, (1, 1), 0, i)

    a = [rec("v1__frame1", 0), rec("v2__frame1", 1)]
    b = [rec("v1__frame9", 0), rec("v1__frame10", 1), rec("v2__frame3", 2), rec("v3__frame1", 3)]
    overlap = video_overlap(a, b)
    assert (overlap.num_records, overlap.num_videos, overlap.total_videos_b) == (3, 2, 3)
    assert overlap.videos == ("v1", "v2")
    assert [r.index for r in overlap.records] == [0, 1, 2]


@needs_real_index
def test_real_forgerynet_index_at_scale():
    train = load_index(SHARED_INDEX / "train_idx.json")
    val = load_index(SHARED_INDEX / "val_idx.json")
    assert (len(train), len(val)) == (8500, 1500)
    for records, n_label in ((train, 4250), (val, 750)):
        report = validate_records(records, SHARED_INDEX, check_files=False, source="real")
        assert report.ok, report.summary()
        assert report.label_counts == {0: n_label, 1: n_label}
    train_report = validate_records(train, SHARED_INDEX, check_files=False)
    assert train_report.size_histogram["720x1280"] == 2161
    assert max(train_report.size_histogram, key=train_report.size_histogram.get) == "720x1280"
    overlap = video_overlap(train, val)
    assert (overlap.num_records, overlap.num_videos, overlap.total_videos_b) == (506, 466, 1437)
