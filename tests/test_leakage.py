"""Video groups (ForgeryNet ids shared across clip names) and the train/val leakage check."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from qwen_forensics.data.leakage import (ClipIds, VideoLeakageError, VideoLeakageWarning, check_leakage, clip_ids,
                                         require_no_leakage, video_groups)
from qwen_forensics.data.records import Record, load_index, video_overlap
from qwen_forensics.data.split import split_by_video
from scripts import SHARED_INDEX, needs_real_index

REPO = Path(__file__).resolve().parents[1]
CHECK_DATA = REPO / "Qwen_code" / "check_data.py"
MAKE_SPLIT = REPO / "Qwen_code" / "make_split.py"

A, B, C, D, E = (ch * 32 for ch in "abcde")


def fake(method: int, src: str, dst: str, frame: int = 1) -> str:
    return f"{method}__{src}__{dst}__frame{frame:05d}"


def real(ident: str, k: int = 18, frame: int = 1) -> str:
    return f"image__{k}__{ident}__frame{frame:05d}"


def records(*names: str) -> list[Record]:
    """Records named ``trainingset2/image/<name>.jpg`` (labels follow the naming pattern)."""
    out = []
    for i, name in enumerate(names):
        path = f"trainingset2/image/{name}.jpg"
        if name.startswith("image__"):
            out.append(Record(path, None, (720, 1280), 0, i))
        else:
            out.append(Record(path, path.replace("/image/", "/spatial_localize/"), None, 1, i))
    return out


def groups_of(*names: str) -> list[str]:
    """Group label of each name, computed over all of them."""
    recs = records(*names)
    group_of = video_groups(recs)
    return [group_of[r.video] for r in recs]


def test_clip_ids_parse_forgerynet_names_and_keep_others():
    assert clip_ids(f"3__{A}__{B}") == ClipIds(target=f"id:{B}", source=f"id:{A}")
    assert clip_ids(f"image__19__{A}") == ClipIds(target=f"id:{A}")
    assert clip_ids(f"image__19__{A.upper()}") == ClipIds(target=f"id:{A}")
    for odd in ("still_photo", "image__1__aaa", f"3__{A}__short", f"x__{A}__{B}", f"3__{A}__{B}__extra", A):
        assert clip_ids(odd) == ClipIds(target=f"clip:{odd}"), odd


def test_fake_joins_the_real_of_its_target_and_of_its_source():
    assert groups_of(fake(3, A, B), real(B)) == [f"3__{A}__{B}"] * 2
    assert groups_of(fake(3, A, B), real(A)) == [f"3__{A}__{B}"] * 2
    assert groups_of(fake(3, A, B), real(C)) == [f"3__{A}__{B}", f"image__18__{C}"]


def test_same_pair_under_other_methods_and_same_target_join():
    labels = groups_of(fake(3, A, B), fake(7, A, B, frame=9), fake(11, C, B))
    assert len(set(labels)) == 1


def test_source_links_only_when_it_is_a_clip_of_the_records():
    # A donor id that is never a real or a target (method 1 reuses one for hundreds of targets).
    donor_only = groups_of(fake(1, D, A), fake(1, D, B), fake(1, D, C))
    assert len(set(donor_only)) == 3
    # Once the donor's own real clip is in the set, its footage is shared: everything joins.
    with_clip = groups_of(fake(1, D, A), fake(1, D, B), fake(1, D, C), real(D))
    assert len(set(with_clip)) == 1
    # The same holds when the donor is the target of another fake.
    assert len(set(groups_of(fake(1, D, A), fake(5, E, D)))) == 1


def test_groups_are_transitive():
    labels = groups_of(fake(3, A, B), fake(4, B, C), real(C), real(E), fake(9, D, E))
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4]
    assert labels[0] != labels[3]


def test_real_k_does_not_matter():
    assert len(set(groups_of(real(A, k=16), real(A, k=19, frame=4)))) == 1
    assert len(set(groups_of(real(A, k=16), real(B, k=16)))) == 2


def test_other_names_keep_the_clip_name():
    labels = groups_of("foo__frame00001", "foo__frame00002", "still_photo", "image__1__aaa__frame00001", A + "__frame00001", real(A))
    assert labels[:2] == ["foo", "foo"]
    assert labels[2] == "still_photo" and labels[3] == "image__1__aaa"
    assert labels[4] == A and labels[5] == f"image__18__{A}"  # a clip named like an id is not that id


def test_labels_do_not_depend_on_record_order():
    names = [fake(3, A, B), real(B), fake(4, C, D), real(C), "foo__frame1"]
    forward = video_groups(records(*names))
    backward = video_groups(records(*reversed(names)))
    assert forward == backward
    assert forward[f"image__18__{B}"] == f"3__{A}__{B}"  # the smallest clip name of the group


def test_check_leakage_counts_groups_and_records():
    train = records(fake(3, A, B), real(C), "foo__frame00001")
    val = records(real(B), real(B, frame=2), fake(7, A, B), fake(2, C, E), "foo__frame00002", real(D))
    report = check_leakage(train, val, train_name="train_idx.json", val_name="val_idx.json")
    assert (report.num_records, report.num_groups, report.total_val_groups, report.num_val_records) == (5, 3, 4, 6)
    assert [r.index for r in report.records] == [0, 1, 2, 3, 4]
    first = report.groups[0]
    assert first.label == f"3__{A}__{B}" and (first.num_train_records, first.num_val_records) == (1, 3)
    assert first.train_clips == (f"3__{A}__{B}",) and first.val_clips == (f"7__{A}__{B}", f"image__18__{B}")
    # By clip name alone only "foo" is shared.
    assert (report.by_clip_name.num_records, report.by_clip_name.num_videos) == (1, 1)
    assert report.metrics() == {"val_overlap_records": 5, "val_overlap_groups": 3, "val_groups": 4}
    assert report.summary().startswith("video overlap: 5 of 6 records in val_idx.json come from 3 of 4 video groups that also appear in train_idx.json")
    assert json.loads(json.dumps(report.to_dict()))["groups"][0]["label"] == first.label
    assert not report.ok and check_leakage(train, records(real(D))).ok


def test_require_no_leakage_stops_or_warns_when_allowed():
    train, val = records(fake(3, A, B)), records(real(B), real(D))
    with pytest.raises(VideoLeakageError) as err:
        require_no_leakage(train, val, train_name="t.json", val_name="v.json", allow_key="allow_val_overlap")
    msg = str(err.value)
    assert "1 of 2 records in v.json" in msg and "make_split.py" in msg and "allow_val_overlap" in msg
    with pytest.warns(VideoLeakageWarning, match="Running anyway because allow_val_overlap is set"):
        report = require_no_leakage(train, val, allow_overlap=True, allow_key="allow_val_overlap")
    assert report.metrics()["val_overlap_records"] == 1
    assert require_no_leakage(train, records(real(D))).ok


@pytest.fixture(scope="module")
def real_index() -> tuple[list[Record], list[Record]]:
    return load_index(SHARED_INDEX / "train_idx.json"), load_index(SHARED_INDEX / "val_idx.json")


@needs_real_index
def test_real_index_overlap_pinned(real_index):
    train, val = real_index
    assert video_overlap(train, val).num_records == 506  # the clip name still gives the old count
    report = check_leakage(train, val)
    assert (report.num_records, report.num_groups, report.total_val_groups) == (1150, 899, 1227)
    clip = report.by_clip_name
    assert (clip.num_records, clip.num_videos, clip.total_videos_b) == (506, 466, 1437)
    assert Counter(r.label for r in report.records) == {1: 594, 0: 556}


@needs_real_index
def test_real_index_group_sizes_and_the_facts_behind_the_rule(real_index):
    train, val = real_index
    everything = train + val
    group_of = video_groups(everything)
    sizes = sorted(Counter(group_of[r.video] for r in everything).values(), reverse=True)
    assert (len(group_of), len(sizes), sizes[:3]) == (7706, 4232, [16, 15, 14])
    parsed = {r.video: clip_ids(r.video) for r in everything}
    clips = {ids.target for ids in parsed.values()}
    # Method 1 puts one donor id into all its fakes, and that donor is no clip of the data.
    method1_sources = {parsed[r.video].source for r in everything if r.video.startswith("1__")}
    assert len(method1_sources) == 1 and method1_sources.isdisjoint(clips)
    assert sum(r.video.startswith("1__") for r in everything) == 386
    # k is a property of the real id: no id comes with two values of k.
    k_of_id: dict[str, set[str]] = {}
    for r in everything:
        if r.label == 0:
            k_of_id.setdefault(parsed[r.video].target, set()).add(r.video.split("__")[1])
    assert len(k_of_id) == 3336 and all(len(ks) == 1 for ks in k_of_id.values())


@needs_real_index
def test_split_of_real_index_shares_no_group_and_is_balanced(real_index):
    everything = real_index[0] + real_index[1]
    train, val = split_by_video(everything, 0.15, seed=0)
    assert check_leakage(train, val).ok and video_overlap(train, val).num_records == 0
    assert len(train) + len(val) == len(everything)
    labels = Counter(r.label for r in val)
    for label in (0, 1):
        assert abs(labels[label] - 0.15 * 5000) <= 2, labels


@needs_real_index
def test_make_split_on_real_index_then_check_data_finds_no_overlap(tmp_path, real_index):
    annotation = tmp_path / "annotation.json"
    annotation.write_text(json.dumps([r.to_json() for r in real_index[0] + real_index[1]]), encoding="utf-8")
    split = subprocess.run([sys.executable, str(MAKE_SPLIT), "--annotation", str(annotation)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert split.returncode == 0, split.stderr
    assert "all  : 10000 records, 7706 clips in 4232 video groups" in split.stdout
    check = subprocess.run([sys.executable, str(CHECK_DATA), "--index", str(tmp_path / "train_idx.json"),
                            "--other-index", str(tmp_path / "val_idx.json"), "--no-files"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "video overlap: 0 of 1500 records" in check.stdout and "0 records from 0 of" in check.stdout


@needs_real_index
def test_check_data_prints_the_new_numbers_on_the_real_index(tmp_path):
    done = subprocess.run([sys.executable, str(CHECK_DATA), "--index", str(SHARED_INDEX / "train_idx.json"),
                           "--other-index", str(SHARED_INDEX / "val_idx.json"), "--no-files", "--json-out", str(tmp_path / "r.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "video overlap: 1150 of 1500 records" in done.stdout and "from 899 of 1227 video groups" in done.stdout
    assert "by clip name alone, the file name before '__frame': 506 records from 466 of 1437 clips" in done.stdout
    overlap = json.loads((tmp_path / "r.json").read_text())["overlap"]
    assert (overlap["num_records"], overlap["num_groups"], overlap["total_groups_other"]) == (1150, 899, 1227)
    assert overlap["by_clip_name"]["num_records"] == 506 and len(overlap["records"]) == 1150
