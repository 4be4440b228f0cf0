"""Per-image breakdowns for the report: by manipulation method, by mask area, and gallery picks.

Input is the per-image rows of an evaluation (the dicts written to ``predictions.json``). Columns read:

- ``image_path`` (str) and ``label`` (0 real / 1 fake): always required.
- score columns named by the caller (``p_fake``; Task 3 ``p_fake_lm``, ``p_fake_head``): P(fake) per
  image, required in every row.
- ``pixel_f1``, ``pixel_iou`` (optional): per-image pixel metrics of fakes (``score_heads`` rows).
- ``empty_mask`` (optional): True for a fake whose binarised mask is empty. Such fakes are left out
  of every pixel mean, as ``metrics.PixelMetricAccumulator`` does, so the tables agree with the
  run's ``pixel_f1`` / ``pixel_iou``.
- ``mask_area`` (optional, the caller adds it): the fraction of the image's pixels covered by the
  binarised ground-truth mask at the original resolution, e.g. ``float(gt.mean())``; 0 for reals.

Conventions follow ``metrics``: fake is positive and an image is called fake when ``score >= threshold``.
"""
from __future__ import annotations

import math

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from qwen_forensics.data.methods import group_order, manipulation_method

DEFAULT_AREA_EDGES = (0.01, 0.05, 0.15, 0.40)
EMPTY_BUCKET = "empty mask"


def rows_frame(rows: Sequence[Mapping[str, Any]], score_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The rows as a DataFrame (one row per image, original order), after checking what every table needs."""
    if not rows:
        raise ValueError("per-image rows are empty: the report needs at least one evaluated image")
    frame = pd.DataFrame(list(rows))
    for column in ("image_path", "label", *score_columns):
        if column not in frame.columns:
            raise ValueError(f"per-image rows have no {column!r} column; every row needs image_path, label and "
                             "each score column")
        missing = np.flatnonzero(frame[column].isna().to_numpy())
        if missing.size:
            raise ValueError(f"per-image rows {missing[:5].tolist()} have no {column!r} value "
                             f"({missing.size} rows in all)")
    for column in score_columns:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"score column {column!r} must hold finite numbers (P(fake)); rows "
                             f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()} do not")
    if not frame["label"].isin((0, 1)).all():
        raise ValueError(f"per-image rows: label must be 0 or 1, got {sorted(set(frame['label']))[:10]}")
    frame["label"] = frame["label"].astype(int)
    return frame


def _pixel_scored(frame: pd.DataFrame) -> pd.Series:
    """Fakes with per-image pixel metrics and a non-empty mask: the images pixel means average over."""
    if "pixel_iou" not in frame.columns or "pixel_f1" not in frame.columns:
        return pd.Series(False, index=frame.index)
    empty = frame["empty_mask"].eq(True) if "empty_mask" in frame.columns else pd.Series(False, index=frame.index)
    return (frame["label"] == 1) & frame["pixel_iou"].notna() & frame["pixel_f1"].notna() & ~empty


def _auroc(fake_scores: np.ndarray, real_scores: np.ndarray) -> float:
    if fake_scores.size == 0 or real_scores.size == 0:
        return float("nan")
    y = np.r_[np.ones(fake_scores.size), np.zeros(real_scores.size)]
    return float(roc_auc_score(y, np.r_[fake_scores, real_scores]))


def _rate(values: np.ndarray, threshold: float) -> float:
    return float((values >= threshold).mean()) if values.size else float("nan")


def method_table(rows: Sequence[Mapping[str, Any]], score_column: str, threshold: float | None = None,
                 names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per manipulation method (then ``real``, ``other``) for one score column.

    Columns: ``method``, ``count``, ``num_fake``, ``num_real``, ``mean_p_fake`` (over the group's
    images), ``recall@0.5`` (share of the group's fakes called fake), ``fpr@0.5`` (share of the
    group's reals called fake), the same two ``@tuned`` when ``threshold`` is given, ``auroc`` (the
    group's fakes against ALL reals of the run: how separable this method is from real frames), and
    ``pixel_f1`` / ``pixel_iou`` means over the group's scored fakes when the rows have them.
    Undefined entries are NaN. With ``names`` (method number -> name, ``methods.read_method_names``) a
    ``name`` column follows ``method``.
    """
    frame = rows_frame(rows, [score_column])
    frame["method"] = frame["image_path"].map(manipulation_method)
    scores = frame[score_column].to_numpy(dtype=np.float64)
    all_reals = scores[frame["label"].to_numpy() == 0]
    scored = _pixel_scored(frame)
    has_pixels = "pixel_iou" in frame.columns and "pixel_f1" in frame.columns
    thresholds = {"0.5": 0.5, **({"tuned": float(threshold)} if threshold is not None else {})}
    out = []
    for group in sorted(frame["method"].unique(), key=group_order):
        in_group = (frame["method"] == group).to_numpy()
        fakes = scores[in_group & (frame["label"].to_numpy() == 1)]
        reals = scores[in_group & (frame["label"].to_numpy() == 0)]
        entry: dict[str, Any] = {"method": group}
        if names:
            entry["name"] = names.get(group, "")
        entry.update(count=int(in_group.sum()), num_fake=int(fakes.size), num_real=int(reals.size),
                     mean_p_fake=float(scores[in_group].mean()))
        for name, value in thresholds.items():
            entry[f"recall@{name}"] = _rate(fakes, value)
            entry[f"fpr@{name}"] = _rate(reals, value)
        entry["auroc"] = _auroc(fakes, all_reals)
        if has_pixels:
            pix = frame.loc[in_group & scored.to_numpy()]
            entry["pixel_f1"] = float(pix["pixel_f1"].mean()) if len(pix) else float("nan")
            entry["pixel_iou"] = float(pix["pixel_iou"].mean()) if len(pix) else float("nan")
        out.append(entry)
    return pd.DataFrame(out)


def area_bucket_labels(edges: Sequence[float] = DEFAULT_AREA_EDGES) -> list[str]:
    """``["<1%", "1-5%", ..., ">=40%"]`` for the given increasing edges (fractions in (0, 1))."""
    pct = [f"{100 * e:g}" for e in edges]
    return [f"<{pct[0]}%", *(f"{a}-{b}%" for a, b in zip(pct, pct[1:])), f">={pct[-1]}%"]


def mask_area_table(rows: Sequence[Mapping[str, Any]], edges: Sequence[float] = DEFAULT_AREA_EDGES) -> pd.DataFrame:
    """Pixel metrics of fakes by how much of the image the binarised mask covers.

    Buckets are half-open, ``[edges[i-1], edges[i])``, in fractions of the image; fakes with an
    empty mask (``mask_area`` 0 or ``empty_mask`` True) get their own first row ``empty mask``,
    counted but never averaged. Columns: ``bucket``, ``count``, ``pixel_f1``, ``pixel_iou`` (means;
    NaN for an empty bucket). Every bucket is listed, so the table's shape does not depend on the data.
    Requires ``mask_area``, ``pixel_f1`` and ``pixel_iou`` in the rows (see the module docstring).
    """
    if list(edges) != sorted(set(edges)) or not all(0.0 < e < 1.0 for e in edges):
        raise ValueError(f"mask area edges must be strictly increasing fractions in (0, 1), got {list(edges)}")
    frame = rows_frame(rows)
    for column in ("mask_area", "pixel_f1", "pixel_iou"):
        if column not in frame.columns:
            raise ValueError(f"mask_area_table: the rows have no {column!r} column; add it per fake image "
                             "(mask_area = fraction of pixels in the binarised ground-truth mask)")
    fakes = frame[frame["label"] == 1]
    area = fakes["mask_area"].to_numpy(dtype=np.float64)
    if np.isnan(area).any() or (area < 0).any() or (area > 1).any():
        bad = fakes.index[np.isnan(area) | (area < 0) | (area > 1)].tolist()[:5]
        raise ValueError(f"mask_area must be a fraction in [0, 1] for every fake; rows {bad} are not")
    empty = (area == 0) | (fakes["empty_mask"].eq(True).to_numpy() if "empty_mask" in fakes.columns else False)
    scored = _pixel_scored(fakes).to_numpy() & ~empty
    bucket = np.searchsorted(np.asarray(edges), area, side="right")
    out = [{"bucket": EMPTY_BUCKET, "count": int(empty.sum()), "pixel_f1": float("nan"), "pixel_iou": float("nan")}]
    for i, label in enumerate(area_bucket_labels(edges)):
        chosen = fakes[(bucket == i) & ~empty]
        pix = fakes[(bucket == i) & scored]
        out.append({"bucket": label, "count": len(chosen),
                    "pixel_f1": float(pix["pixel_f1"].mean()) if len(pix) else float("nan"),
                    "pixel_iou": float(pix["pixel_iou"].mean()) if len(pix) else float("nan")})
    return pd.DataFrame(out)


def select_gallery(rows: Sequence[Mapping[str, Any]], k: int, column: str = "pixel_iou") -> tuple[list[int], list[int]]:
    """Row positions of the ``k`` best and ``k`` worst localisations among scored fakes.

    Best is ordered best first, worst worst first; ties go to the earlier row. The two lists never
    share a row (with fewer than ``2k`` candidates the worst list is shorter), so the caller builds
    at most ``2k`` heatmaps at the original resolution.
    """
    if k < 0:
        raise ValueError(f"select_gallery: k must be >= 0, got {k}")
    frame = rows_frame(rows)
    if column not in frame.columns:
        raise ValueError(f"select_gallery: the rows have no {column!r} column (pixel metrics of fakes)")
    candidates = frame[_pixel_scored(frame) & frame[column].notna()]
    ranked = sorted(candidates.index, key=lambda i: (-candidates.at[i, column], i))
    best = [int(i) for i in ranked[:k]]
    rest = sorted(ranked[k:], key=lambda i: (candidates.at[i, column], i))
    return best, [int(i) for i in rest[:k]]


def select_false_alarms(rows: Sequence[Mapping[str, Any]], k: int) -> list[int]:
    """Row positions of up to ``k`` authentic images with the largest share of pixels called forged
    (``positive_fraction`` of the pixel scoring), largest first; reals with none are no false alarm."""
    reals = [(float(r["positive_fraction"]), i) for i, r in enumerate(rows)
             if r.get("label") == 0 and r.get("positive_fraction") is not None and float(r["positive_fraction"]) > 0]
    return [i for _, i in sorted(reals, key=lambda item: (-item[0], item[1]))[:k]]


def select_examples(rows: Sequence[Mapping[str, Any]], score_column: str, threshold: float,
                    k: int) -> dict[str, list[int]]:
    """Up to ``k`` row positions per group, for the examples section: the surest right calls (fakes with
    the highest score, reals with the lowest) and the worst mistakes (reals with the highest score,
    fakes with the lowest) at ``threshold``."""
    scored = [(float(r[score_column]), i, r.get("label")) for i, r in enumerate(rows)
              if r.get(score_column) is not None and not math.isnan(float(r[score_column]))]
    fakes = sorted((s, i) for s, i, label in scored if label == 1)
    reals = sorted((s, i) for s, i, label in scored if label == 0)
    return {
        "surest fakes (called fake)": [i for s, i in reversed(fakes) if s >= threshold][:k],
        "surest reals (called real)": [i for s, i in reals if s < threshold][:k],
        "worst false alarms (reals called fake)": [i for s, i in reversed(reals) if s >= threshold][:k],
        "worst misses (fakes called real)": [i for s, i in fakes if s < threshold][:k],
    }


def confusion_counts(rows: Sequence[Mapping[str, Any]], score_column: str, threshold: float) -> dict[str, int]:
    """``tn``, ``fp``, ``fn``, ``tp`` with fake positive, an image called fake when ``score >= threshold``."""
    frame = rows_frame(rows, [score_column])
    fake = frame["label"].to_numpy() == 1
    called = frame[score_column].to_numpy(dtype=np.float64) >= threshold
    return {"tn": int((~fake & ~called).sum()), "fp": int((~fake & called).sum()),
            "fn": int((fake & ~called).sum()), "tp": int((fake & called).sum())}
