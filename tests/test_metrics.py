import json
import csv
import math
import random

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from qwen_forensics.evaluation.metrics import (IMAGE_REPORT_KEYS, PixelMetricAccumulator, combined_score,
                                               f1_iou_from_counts, image_metrics, image_report, tune_threshold)
from qwen_forensics.files import append_csv_row

Y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
P = np.array([0.9, 0.6, 0.4, 0.55, 0.2, 0.1, 0.8, 0.45])


def test_image_metrics_hand_and_sklearn():
    m = image_metrics(Y, P)
    # Hand: pairs (fake, real) = 16; fake 0.4 loses to 0.55 and 0.45 -> 14/16.
    assert m["auroc"] == pytest.approx(14 / 16)
    # Predicted fake at 0.5: 0.9, 0.6, 0.55, 0.8 -> TP 3, FP 1, FN 1, TN 3.
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["auroc"] == pytest.approx(roc_auc_score(Y, P))
    assert m["ap"] == pytest.approx(average_precision_score(Y, P))
    assert m["acc"] == pytest.approx(accuracy_score(Y, P >= 0.5))
    assert m["f1"] == pytest.approx(f1_score(Y, P >= 0.5))
    assert (m["samples"], m["num_fake"], m["num_real"], m["positive_ratio"]) == (8, 4, 4, 0.5)
    assert m["single_class"] is False


def test_image_metrics_threshold_is_inclusive_and_accepts_torch():
    m = image_metrics(torch.tensor([1, 0]), torch.tensor([0.5, 0.49], dtype=torch.bfloat16))
    assert m["acc"] == 1.0 and m["f1"] == 1.0


def test_single_class_gives_nan_flag_not_crash():
    with pytest.warns(RuntimeWarning, match="only one class"):
        m = image_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert math.isnan(m["auroc"]) and math.isnan(m["ap"])
    assert m["single_class"] is True
    assert m["acc"] == pytest.approx(2 / 3)
    with pytest.warns(RuntimeWarning):
        m = image_metrics([0, 0], [0.1, 0.2])
    assert m["f1"] == 0.0 and m["acc"] == 1.0


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([], [], "empty"),
        ([0, 1], [0.1], "must match"),
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [0.1, float("nan")], "non-finite"),
    ],
)
def test_image_metrics_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        image_metrics(y, p)


def test_tune_threshold_maximises_f1_on_hand_example():
    # Sorted scores: .9F .8F .6F .55R .45R .4F .2R .1R. Cut after .6: F1 = 6/7; after .4: 8/10; all: 8/12.
    t = tune_threshold(Y, P)
    assert t == pytest.approx((0.6 + 0.55) / 2)
    assert image_metrics(Y, P, threshold=t)["f1"] == pytest.approx(6 / 7)


def test_tune_threshold_is_the_f1_max_over_all_cuts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.2, 200), 0, 1), 2)
    t = tune_threshold(y, p)
    best = max(f1_score(y, p >= c) for c in np.unique(p))
    assert f1_score(y, p >= t) == pytest.approx(best)


def test_tune_threshold_ties_and_all_positive():
    # Cut after .9: F1 2/3, acc 3/4; cut after .6: F1 4/6, acc 2/4 -> the tie goes to accuracy.
    assert tune_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(0.85)
    # Equal scores form one cut: [.9, .9] both called fake, midpoint to .3.
    assert tune_threshold([1, 1, 0], [0.9, 0.9, 0.3]) == pytest.approx(0.6)
    # Perfectly mixed equal scores: the only cut predicts all fake; threshold is that score.
    assert tune_threshold([1, 0], [0.4, 0.4]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="both fake and real"):
        tune_threshold([1, 1], [0.3, 0.4])


def test_image_report_keys():
    r = image_report(Y, P, tuned_threshold=0.575)
    assert list(r) == list(IMAGE_REPORT_KEYS)
    assert r["acc@0.5"] == pytest.approx(6 / 8)
    assert r["f1@tuned"] == pytest.approx(6 / 7)
    assert r["acc@tuned"] == pytest.approx(7 / 8)
    assert r["threshold"] == 0.575
    r = image_report(Y, P)
    assert math.isnan(r["acc@tuned"]) and math.isnan(r["f1@tuned"]) and math.isnan(r["threshold"])


def test_combined_score():
    assert combined_score(0.9, 0.6, 0.3) == pytest.approx(0.6)


def test_f1_iou_from_counts():
    assert f1_iou_from_counts(3, 1, 2) == (pytest.approx(6 / 9), pytest.approx(3 / 6))
    assert f1_iou_from_counts(0, 0, 0) == (1.0, 1.0)
    assert f1_iou_from_counts(0, 4, 0) == (0.0, 0.0)


def _fixtures():
    """Four images at original resolutions (not square), with hand-counted confusions."""
    # Fake A, 4x6: gt 2x3 block, pred covers 2x2 of it plus 2 extra pixels -> TP 4, FP 2, FN 2.
    gt_a = np.zeros((4, 6), bool)
    gt_a[1:3, 1:4] = True
    pr_a = np.zeros((4, 6))
    pr_a[1:3, 1:3] = 0.9
    pr_a[0, 0:2] = 0.5  # exactly the threshold: counts as positive
    pr_a[3, 5] = 0.49  # just below: negative
    # Fake B, 3x5: gt 5 pixels, pred 0 pixels -> TP 0, FP 0, FN 5.
    gt_b = np.zeros((3, 5), bool)
    gt_b[0] = True
    pr_b = np.full((3, 5), 0.1)
    # Fake C with an empty mask (excluded), pred 3 pixels.
    gt_c = np.zeros((2, 2), bool)
    pr_c = np.array([[0.9, 0.9], [0.9, 0.0]])
    # Real D, 2x5: 2 of 10 predicted positive; real E, 5x2: none.
    pr_d = np.zeros((2, 5))
    pr_d[0, :2] = 0.7
    pr_e = np.zeros((5, 2))
    return [
        (pr_a, gt_a, 1),
        (pr_b, gt_b, 1),
        (pr_c, gt_c, 1),
        (pr_d, np.zeros((2, 5), bool), 0),
        (pr_e, np.zeros((5, 2), bool), 0),
    ]


def test_pixel_metrics_hand_calculation():
    acc = PixelMetricAccumulator(threshold=0.5)
    per_image = [acc.update(*f) for f in _fixtures()]
    assert (per_image[0]["tp"], per_image[0]["fp"], per_image[0]["fn"]) == (4, 2, 2)
    assert per_image[0]["pixel_f1"] == pytest.approx(8 / 12)
    assert per_image[1]["pixel_iou"] == 0.0
    assert per_image[2]["empty_mask"] is True
    assert per_image[3]["positive_fraction"] == pytest.approx(0.2)
    r = acc.compute()
    assert r["pixel_f1"] == pytest.approx((8 / 12 + 0.0) / 2)
    assert r["pixel_iou"] == pytest.approx((4 / 8 + 0.0) / 2)
    # Cumulative over scored fakes: TP 4, FP 2, FN 7.
    assert r["ciou"] == pytest.approx(4 / 13)
    assert r["cdice"] == pytest.approx(8 / 17)
    assert r["false_alarm"] == pytest.approx((0.2 + 0.0) / 2)
    assert (r["num_fake_scored"], r["num_fake_empty_mask"], r["num_real_scored"]) == (2, 1, 2)


def test_pixel_metrics_match_sklearn_per_image():
    rng = np.random.default_rng(1)
    acc = PixelMetricAccumulator(0.3)
    f1s = []
    for h, w in [(7, 9), (12, 5), (4, 4)]:
        prob = rng.random((h, w))
        gt = rng.random((h, w)) > 0.6
        acc.update(torch.from_numpy(prob).float(), torch.from_numpy(gt), 1)
        f1s.append(f1_score(gt.ravel(), (torch.from_numpy(prob).float().numpy() >= 0.3).ravel()))
    assert acc.compute()["pixel_f1"] == pytest.approx(np.mean(f1s))


def test_pixel_accumulator_merge_is_order_independent():
    fixtures = _fixtures() * 7
    whole = PixelMetricAccumulator()
    for f in fixtures:
        whole.update(*f)
    shuffled = fixtures[:]
    random.Random(0).shuffle(shuffled)
    shards = [PixelMetricAccumulator() for _ in range(3)]
    for i, f in enumerate(shuffled):
        shards[i % 3].update(*f)
    merged = PixelMetricAccumulator.from_state_dict(shards[2].state_dict())
    merged.merge(shards[0])
    merged.merge(shards[1].state_dict())
    # Bit-identical, not just close: the DDP evaluation must equal the single-process one.
    assert merged.compute() == whole.compute()
    with pytest.raises(ValueError, match="threshold"):
        merged.merge(PixelMetricAccumulator(0.4))


def test_pixel_metrics_empty_sets_are_nan():
    r = PixelMetricAccumulator().compute()
    for k in ("pixel_f1", "pixel_iou", "ciou", "cdice", "false_alarm"):
        assert math.isnan(r[k])


@pytest.mark.parametrize(
    "prob, gt, label, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool), 1, "upsample"),
        (np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool), 1, "2-D"),
        (np.zeros((4, 4)), np.full((4, 4), 0.3), 1, "binarise"),
        (np.zeros((4, 4)), np.ones((4, 4), bool), 0, "real image"),
        (np.zeros((4, 4)), np.zeros((4, 4), bool), 2, "label"),
    ],
)
def test_pixel_bad_input(prob, gt, label, match):
    with pytest.raises(ValueError, match=match):
        PixelMetricAccumulator().update(prob, gt, label)


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_append_csv_row_new_file_order_and_append(tmp_path):
    path = tmp_path / "sub" / "metrics.csv"
    seed = ["timestamp", "dataset", "samples"]
    append_csv_row(path, {"auroc": 0.9, "samples": 10, "dataset": "a", "timestamp": "t1"}, seed)
    append_csv_row(path, {"timestamp": "t2", "dataset": "b", "samples": 20, "auroc": 0.8}, seed)
    assert _read(path) == [
        ["timestamp", "dataset", "samples", "auroc"],
        ["t1", "a", "10", "0.9"],
        ["t2", "b", "20", "0.8"],
    ]


def test_append_csv_row_extends_header_preserving_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("timestamp,auroc,user_note\nt0,0.5,\"keep, this\"\n", encoding="utf-8")
    append_csv_row(path, {"timestamp": "t1", "ap": 0.7, "auroc": 0.6}, ["timestamp"])
    assert _read(path) == [
        ["timestamp", "auroc", "user_note", "ap"],
        ["t0", "0.5", "keep, this", ""],
        ["t1", "0.6", "", "0.7"],
    ]
    # A row with fewer columns than the header appends in place with empty cells.
    append_csv_row(path, {"timestamp": "t2"}, ["timestamp"])
    assert _read(path)[-1] == ["t2", "", "", ""]
    assert not list(tmp_path.glob(".*tmp"))


def test_append_csv_row_refuses_bad_input_without_touching_file(tmp_path):
    path = tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="leading columns"):
        append_csv_row(path, {"auroc": 1.0}, ["timestamp"])
    assert not path.exists()
    broken = "a,b\n1,2,3\n"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        append_csv_row(path, {"a": 1, "c": 2}, ["a"])
    assert path.read_text(encoding="utf-8") == broken


def test_printed_metrics_show_null_not_nan():
    from qwen_forensics.files import printable_json
    text = printable_json({"auroc": 0.75, "acc@tuned": float("nan"), "nested": [float("inf"), 1]})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auroc": 0.75, "acc@tuned": None, "nested": [None, 1]}
