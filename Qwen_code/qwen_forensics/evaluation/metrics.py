"""Image- and pixel-level metrics (SPEC section 7) and the append-only metrics CSV.

Conventions shared by every task:
- fake is the positive class (label 1); a score is P(fake); an image is predicted fake when
  ``p_fake >= threshold``, a pixel is predicted manipulated when ``prob >= threshold``.
- Report keys: ``auroc``, ``ap``, ``acc@0.5``, ``f1@0.5``, ``acc@tuned``, ``f1@tuned``,
  ``threshold`` (the tuned one), plus ``samples``, ``positive_ratio``, ``num_fake``, ``num_real``
  and ``single_class``. The seed's ``acc`` / ``f1`` columns mean ``acc@0.5`` / ``f1@0.5``.
- The threshold is tuned on the validation set only (``tune_threshold``); these functions take
  plain arrays, so keeping test data out of tuning is the caller's job.
- Pixel metrics are computed at the original image resolution (the caller upsamples the heatmap
  and crops the letterbox padding first) against a mask binarised once by the data layer's rule.
- The pixel columns follow three conventions (the README maps each to the benchmarks that use it):
  per-image means over fakes with a non-empty mask (``pixel_f1``, ``pixel_iou``, ``pixel_auroc``), pooled
  over those fakes' pixels (``pixel_f1_pooled``, ``pixel_iou_pooled``; SPEC 7 calls them ``cdice`` and
  ``ciou``, kept), and IMDLBenCo's (``imdlbenco_pixel_f1``, ``imdlbenco_pixel_iou``): per image over every
  image, an authentic or empty-mask image scoring 0, a pixel positive when its probability is strictly
  above the threshold, against the mask binarised as IMDLBenCo does (``data.masks.imdlbenco_binarize``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

IMAGE_REPORT_KEYS = (
    "samples",
    "positive_ratio",
    "num_fake",
    "num_real",
    "single_class",
    "auroc",
    "ap",
    "acc@0.5",
    "f1@0.5",
    "acc@tuned",
    "f1@tuned",
    "threshold",
)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_image_inputs(y_true: Any, p_fake: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_numpy(y_true).reshape(-1)
    p = _as_numpy(p_fake).astype(np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("image metrics need at least one sample, got an empty array")
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} entries but p_fake has {p.size}; they must match")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must contain only 0 (real) and 1 (fake), got values {np.unique(y)[:10]}")
    if not np.isfinite(p).all():
        raise ValueError(f"p_fake contains {int((~np.isfinite(p)).sum())} non-finite values (NaN/inf)")
    return y.astype(np.int64), p


def _f1_from_counts(tp: int, fp: int, fn: int) -> float:
    # 2TP/(2TP+FP+FN) is 0/0 only when there is no fake and none is predicted; sklearn's default
    # (zero_division) reports 0.0 there, and so do we.
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def image_metrics(y_true: Any, p_fake: Any, *, threshold: float = 0.5) -> dict[str, Any]:
    """AUROC, AP (threshold-free) and ACC, F1 (fake positive) at ``threshold``.

    With only one class present AUROC and AP are undefined: they are NaN, ``single_class`` is
    True and a warning is issued (the run still completes).
    """
    y, p = _check_image_inputs(y_true, p_fake)
    num_fake = int(y.sum())
    num_real = int(y.size - num_fake)
    single_class = num_fake == 0 or num_real == 0
    if single_class:
        warnings.warn(
            f"image metrics: only one class present ({num_fake} fake, {num_real} real); "
            "auroc and ap are reported as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        auroc = ap = float("nan")
    else:
        auroc = float(roc_auc_score(y, p))
        ap = float(average_precision_score(y, p))
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = num_fake - tp
    return {
        "samples": int(y.size),
        "positive_ratio": num_fake / y.size,
        "num_fake": num_fake,
        "num_real": num_real,
        "single_class": single_class,
        "auroc": auroc,
        "ap": ap,
        "acc": float((pred == (y == 1)).mean()),
        "f1": _f1_from_counts(tp, fp, fn),
        "threshold": float(threshold),
    }


def tune_threshold(y_true: Any, p_fake: Any) -> float:
    """The threshold maximising F1 (fake positive) on the given (validation) scores.

    F1 rather than ACC because the pixel-level and challenge metrics are F1-based and F1 does not
    reward predicting the majority class. Among the cuts between distinct scores, the best F1 wins;
    ties go to the higher accuracy, then to the higher threshold. The returned value is the
    midpoint between the lowest score still called fake and the next lower score (the lowest score
    itself when every sample is called fake), so small score shifts on new data do not flip the
    boundary sample. Requires both classes.
    """
    y, p = _check_image_inputs(y_true, p_fake)
    num_fake = int(y.sum())
    if num_fake == 0 or num_fake == y.size:
        raise ValueError(
            "tune_threshold needs both fake and real samples in the validation set; "
            f"got {num_fake} fake of {y.size}"
        )
    order = np.argsort(-p, kind="mergesort")
    p_sorted = p[order]
    y_sorted = y[order]
    # Cut k predicts fake for every sample scoring >= p_sorted[k]; only the last index of each run
    # of equal scores is a valid cut.
    last_of_run = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[last_of_run]
    called = last_of_run + 1
    fp = called - tp
    fn = num_fake - tp
    f1 = 2.0 * tp / (2.0 * tp + fp + fn)
    acc = (tp + (y.size - num_fake - fp)) / y.size
    cut_scores = p_sorted[last_of_run]
    next_lower = np.r_[cut_scores[1:], cut_scores[-1]]
    midpoints = (cut_scores + next_lower) / 2.0
    # Adjacent floats can round the midpoint onto the lower score, which would flip that sample.
    thresholds = np.where(midpoints > next_lower, midpoints, cut_scores)
    best = np.lexsort((thresholds, acc, f1))[-1]
    return float(thresholds[best])


def image_report(y_true: Any, p_fake: Any, *, tuned_threshold: float | None = None) -> dict[str, Any]:
    """The image-level report with the keys in ``IMAGE_REPORT_KEYS``.

    ``tuned_threshold`` comes from ``tune_threshold`` on the validation set; when None the
    ``@tuned`` entries and ``threshold`` are NaN so that CSV columns stay stable across runs.
    """
    at_half = image_metrics(y_true, p_fake, threshold=0.5)
    shared = ("samples", "positive_ratio", "num_fake", "num_real", "single_class", "auroc", "ap")
    report = {k: at_half[k] for k in shared}
    report["acc@0.5"] = at_half["acc"]
    report["f1@0.5"] = at_half["f1"]
    if tuned_threshold is None:
        report["acc@tuned"] = report["f1@tuned"] = report["threshold"] = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tuned = image_metrics(y_true, p_fake, threshold=tuned_threshold)
        report["acc@tuned"] = tuned["acc"]
        report["f1@tuned"] = tuned["f1"]
        report["threshold"] = float(tuned_threshold)
    return report


def combined_score(auroc: float, pixel_f1: float, pixel_iou: float) -> float:
    """The IJCAI 2025 DDL challenge score: (AUROC + pixel F1 + pixel IoU) / 3."""
    return (auroc + pixel_f1 + pixel_iou) / 3.0


def pixel_confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of two boolean maps of the same shape."""
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    return tp, fp, fn


def f1_iou_from_counts(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Per-image F1 = 2TP/(2TP+FP+FN) and IoU = TP/(TP+FP+FN).

    Both are defined as 1.0 when prediction and mask are both empty (perfect agreement). The
    accumulator never averages that case, since fakes with an empty mask are excluded there; it
    only shows up in per-image outputs.
    """
    union = tp + fp + fn
    if union == 0:
        return 1.0, 1.0
    return 2.0 * tp / (2 * tp + fp + fn), tp / union


def _check_pixel_inputs(pred_prob: Any, gt_mask: Any) -> tuple[np.ndarray, np.ndarray]:
    prob = _as_numpy(pred_prob)
    gt = _as_numpy(gt_mask)
    if prob.ndim != 2:
        raise ValueError(f"pred_prob must be one 2-D map (H, W) at the original resolution, got shape {prob.shape}")
    if prob.shape != gt.shape:
        raise ValueError(
            f"pred_prob {prob.shape} and gt_mask {gt.shape} differ: upsample the heatmap to the original "
            "image size and crop the letterbox padding before scoring"
        )
    if gt.dtype != np.bool_:
        if not np.issubdtype(gt.dtype, np.integer) or not np.isin(gt, (0, 1)).all():
            raise ValueError(
                f"gt_mask must be a binarised mask (bool or 0/1 integers), got dtype {gt.dtype}; "
                "binarise soft masks once with the data layer's rule first"
            )
        gt = gt.astype(bool)
    if not np.isfinite(prob).all():
        raise ValueError("pred_prob contains non-finite values (NaN/inf)")
    return prob, gt


def twice_mann_whitney_u(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` [k, n] with labels ``positive`` (bool [k, n]): twice the Mann-Whitney U of the
    positives' scores against the negatives', ties counting half (int64 [k], on the scores' device).

    A row's AUROC is ``2U / (2 P N)`` (P positives, N negatives): exactly ``sklearn.metrics.roc_auc_score``,
    whose trapezoids over tied scores are the half counts. Twice U is an integer, ``sum over positives of
    (first + last 1-based rank of its run of equal scores) - P (P + 1)``, so the loop keeps integers only and
    the order in which images or processes arrive cannot change the result.
    """
    values, order = scores.sort(dim=1)
    labels = positive.gather(1, order)
    n = values.shape[1]
    index = torch.arange(n, device=values.device).expand_as(values)
    new_run = torch.ones_like(labels)
    new_run[:, 1:] = values[:, 1:] != values[:, :-1]
    ends_run = torch.ones_like(labels)
    ends_run[:, :-1] = new_run[:, 1:]
    first = torch.where(new_run, index, 0).cummax(dim=1).values
    last = torch.where(ends_run, index, n - 1).flip(1).cummin(dim=1).values.flip(1)
    count = labels.sum(dim=1)
    return torch.where(labels, first + last + 2, 0).sum(dim=1) - count * (count + 1)


def imdlbenco_f1_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """IMDLBenCo's per-image F1 and IoU: 2TP/(2TP+FP+FN) and TP/(TP+FP+FN) (its ``PixelF1``/``PixelIOU``
    without their 1e-8 guards), and 0 whenever TP is 0: an authentic image, or a fake with an empty mask,
    scores 0 whatever is predicted."""
    if tp == 0:
        return 0.0, 0.0
    return 2.0 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


@dataclass(frozen=True)
class PixelCounts:
    """One image scored at the original resolution: true / false positive and false negative pixels,
    the binarised ground truth's pixels and all pixels; twice the Mann-Whitney U of the probabilities
    of the ground truth's pixels against the others' (:func:`twice_mann_whitney_u`); and the true / false
    positives and false negatives of IMDLBenCo's convention (``prob > threshold`` against its own
    binarisation of the mask). Everything the per-image metrics need."""
    tp: int
    fp: int
    fn: int
    gt: int
    pixels: int
    auc_2u: int
    imdlbenco_tp: int
    imdlbenco_fp: int
    imdlbenco_fn: int

    @property
    def mask_area(self) -> float:
        """The fraction of the image's pixels in the binarised ground truth (0 for reals)."""
        return self.gt / self.pixels if self.pixels else 0.0

    @property
    def pixel_auroc(self) -> float:
        """The image's pixel AUROC; NaN when its ground truth is empty or covers every pixel."""
        pairs = self.gt * (self.pixels - self.gt)
        return self.auc_2u / (2 * pairs) if pairs else float("nan")


def pixel_counts(prob: Any, gt: Any, threshold: float, imdlbenco_gt: Any | None = None) -> PixelCounts:
    """:class:`PixelCounts` of one full-resolution map on the host, what the evaluation loop computes on the
    accelerator (``scoring.PixelCounter``); ``imdlbenco_gt``: the mask as IMDLBenCo binarises it (default
    ``gt``: a mask that is already binary binarises the same way)."""
    prob, gt = _check_pixel_inputs(prob, gt)
    other = gt if imdlbenco_gt is None else _check_pixel_inputs(prob, imdlbenco_gt)[1]
    pred = prob >= threshold
    tp, fp, fn = pixel_confusion(pred, gt)
    strict = pixel_confusion(prob > threshold, other)
    u2 = int(twice_mann_whitney_u(torch.from_numpy(np.ascontiguousarray(prob)).reshape(1, -1),
                                  torch.from_numpy(np.ascontiguousarray(gt)).reshape(1, -1))[0])
    return PixelCounts(tp, fp, fn, int(np.count_nonzero(gt)), pred.size, u2, *strict)


class PixelMetricAccumulator:
    """Accumulates the pixel metrics image by image (SPEC 7 and the conventions of the module doc);
    mergeable across processes.

    Fakes: per-image F1/IoU averaged over images (``pixel_f1``, ``pixel_iou``), the cumulative
    ``ciou`` = sum TP / sum (TP+FP+FN) and ``cdice`` = 2 sum TP / (2 sum TP + sum FP + sum FN) (also under
    the names that say what they are, ``pixel_iou_pooled`` and ``pixel_f1_pooled``) and the per-image pixel
    AUROC averaged over the fakes whose mask also leaves pristine pixels (``pixel_auroc``).
    Reals: ``false_alarm`` = mean over reals of the fraction of pixels predicted positive.
    All of them score against our binarisation of the mask; IMDLBenCo's columns, against its own, are
    :func:`imdlbenco_pixel_metrics`.

    A fake whose binarised mask is empty has no region to localise: its F1/IoU would measure the
    labelling, not the model. Such fakes are counted in ``num_fake_empty_mask`` and excluded from
    every fake pixel metric (per-image means and cumulative sums alike), so all fake metrics cover
    the same images (``num_fake_scored``).

    Per-image values are kept as lists and summed with ``math.fsum`` (exactly rounded), so the
    result does not depend on the order in which images or process shards arrive.
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)
        self.fake_f1: list[float] = []
        self.fake_iou: list[float] = []
        self.fake_auroc: list[float] = []
        self.real_positive_fraction: list[float] = []
        self.sum_tp = 0
        self.sum_fp = 0
        self.sum_fn = 0
        self.num_fake_empty_mask = 0

    def update(self, pred_prob: Any, gt_mask: Any, label: int) -> dict[str, Any]:
        """Score one image; returns its per-image values (for a predictions file).

        ``pred_prob``: (H, W) probabilities at the original resolution; ``gt_mask``: (H, W)
        binarised mask (all False for reals); ``label``: 1 fake, 0 real.
        """
        return self.add_counts(pixel_counts(pred_prob, gt_mask, self.threshold), label)

    def add_counts(self, counts: "PixelCounts", label: int) -> dict[str, Any]:
        """:meth:`update` from one image's counts (what the evaluation loop computes on the accelerator)."""
        if label not in (0, 1):
            raise ValueError(f"label must be 0 (real) or 1 (fake), got {label!r}")
        tp, fp, fn = counts.tp, counts.fp, counts.fn
        positive_fraction = float(tp + fp) / counts.pixels
        if label == 0:
            if counts.gt:
                raise ValueError(
                    f"a real image (label 0) has {counts.gt} positive mask pixels; reals must have an empty mask"
                )
            self.real_positive_fraction.append(positive_fraction)
            return {"positive_fraction": positive_fraction}
        f1, iou = f1_iou_from_counts(tp, fp, fn)
        auroc = counts.pixel_auroc
        empty = counts.gt == 0
        if empty:
            self.num_fake_empty_mask += 1
        else:
            self.fake_f1.append(f1)
            self.fake_iou.append(iou)
            if not math.isnan(auroc):
                self.fake_auroc.append(auroc)
            self.sum_tp += tp
            self.sum_fp += fp
            self.sum_fn += fn
        return {
            "positive_fraction": positive_fraction,
            "empty_mask": empty,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "pixel_f1": f1,
            "pixel_iou": iou,
            "pixel_auroc": auroc,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values, suitable for ``accelerate.utils.gather_object`` or JSON."""
        return {
            "threshold": self.threshold,
            "fake_f1": list(self.fake_f1),
            "fake_iou": list(self.fake_iou),
            "fake_auroc": list(self.fake_auroc),
            "real_positive_fraction": list(self.real_positive_fraction),
            "sum_tp": self.sum_tp,
            "sum_fp": self.sum_fp,
            "sum_fn": self.sum_fn,
            "num_fake_empty_mask": self.num_fake_empty_mask,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "PixelMetricAccumulator":
        acc = cls(state["threshold"])
        acc.merge(state)
        return acc

    def merge(self, other: "PixelMetricAccumulator | Mapping[str, Any]") -> None:
        """Add another accumulator (or its ``state_dict``) computed at the same threshold."""
        state = other.state_dict() if isinstance(other, PixelMetricAccumulator) else other
        if float(state["threshold"]) != self.threshold:
            raise ValueError(
                f"cannot merge pixel metrics computed at threshold {state['threshold']} into one at {self.threshold}"
            )
        for name in ("fake_f1", "fake_iou", "fake_auroc", "real_positive_fraction"):
            getattr(self, name).extend(float(v) for v in state[name])
        self.sum_tp += int(state["sum_tp"])
        self.sum_fp += int(state["sum_fp"])
        self.sum_fn += int(state["sum_fn"])
        self.num_fake_empty_mask += int(state["num_fake_empty_mask"])

    def compute(self) -> dict[str, Any]:
        """The pixel report; metrics without any image to average over are NaN."""
        nan = float("nan")
        n_fake = len(self.fake_f1)
        n_real = len(self.real_positive_fraction)
        union = self.sum_tp + self.sum_fp + self.sum_fn
        ciou = self.sum_tp / union if union else nan
        cdice = 2.0 * self.sum_tp / (self.sum_tp + union) if union else nan
        return {
            "pixel_f1": math.fsum(self.fake_f1) / n_fake if n_fake else nan,
            "pixel_iou": math.fsum(self.fake_iou) / n_fake if n_fake else nan,
            "ciou": ciou,
            "cdice": cdice,
            "false_alarm": math.fsum(self.real_positive_fraction) / n_real if n_real else nan,
            "num_fake_scored": n_fake,
            "num_fake_empty_mask": self.num_fake_empty_mask,
            "num_real_scored": n_real,
            "pixel_threshold": self.threshold,
            "pixel_f1_pooled": cdice,
            "pixel_iou_pooled": ciou,
            "pixel_auroc": math.fsum(self.fake_auroc) / len(self.fake_auroc) if self.fake_auroc else nan,
        }


def imdlbenco_pixel_metrics(counts: Sequence[PixelCounts]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """IMDLBenCo's pixel F1 and IoU of a whole set (its ``PixelF1`` / ``PixelIOU`` averaged by its
    ``MetricLogger``): the per-image values (:func:`imdlbenco_f1_iou` of each image's strict counts against
    its binarisation of the mask) averaged over every image, authentic ones included. Returns the two
    columns and each image's values, in order."""
    per_image = [dict(zip(("imdlbenco_pixel_f1", "imdlbenco_pixel_iou"),
                          imdlbenco_f1_iou(c.imdlbenco_tp, c.imdlbenco_fp, c.imdlbenco_fn))) for c in counts]
    n = len(per_image)
    nan = float("nan")
    return ({key: math.fsum(v[key] for v in per_image) / n if n else nan
             for key in ("imdlbenco_pixel_f1", "imdlbenco_pixel_iou")}, per_image)


def hybrid_scores(lm_auroc: float, heads: Mapping[str, float]) -> dict[str, float]:
    """Task 3's two combined scores (SPEC 7's (AUROC + pixel_f1 + pixel_iou) / 3), one definition for the
    training log's ``val_score`` / ``val_head_score`` and the evaluation CSV's ``score`` / ``head_score``.

    ``score`` takes the LM's AUROC, since the LM's answer is Task 3's verdict; ``head_score`` the heads'
    AUROC (``heads`` is ``eval_outputs.score_heads``' report, whose own ``score`` is that one). Both use
    the heads' pixel F1 and IoU: the heatmap is the only localisation Task 3 has.
    """
    return {"score": combined_score(lm_auroc, heads["pixel_f1"], heads["pixel_iou"]), "head_score": heads["score"]}
