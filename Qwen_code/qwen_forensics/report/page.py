"""One self-contained ``report.html`` per evaluation run, and the HTML pieces ``compare_runs.py`` shares.

The page holds the run description, the metrics table (SPEC 7 names, as the CSV row has them),
ROC and PR curves per score column, confusion matrices at 0.5 and at the tuned threshold, tables
per manipulation method and per mask-area bucket (``breakdown``), and a gallery of the best and
worst localisations. Every picture is an embedded PNG data URI and the page has no script, so the
file can be mailed or archived alone and opens the same anywhere.

The evaluation scripts write it through ``eval_outputs.finish_evaluation``, which picks the gallery
with ``breakdown.select_gallery`` after ``score_heads`` and maps only those few heatmaps back to full
size; each per-image row carries ``mask_area`` for the bucket table (see ``breakdown``).
"""
from __future__ import annotations

import html
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from qwen_forensics.files import atomic_write_text
from qwen_forensics.report.pictures import ERROR_COLOURS
from qwen_forensics.report.plots import gallery_panel, heat_scale_uri, roc_pr_figure, thumbnail_uri
from qwen_forensics.report.tables import confusion_counts, mask_area_table, method_table, rows_frame

HEADINGS = ("Run", "Metrics", "ROC and PR curves", "Confusion matrices", "Per manipulation method",
            "Pixel metrics by mask area", "Best and worst localisations", "False alarms on authentic images",
            "Examples: surest calls and worst mistakes")
NO_TUNED = "no validation set: no tuned threshold"
# Threads that draw the report's pictures (render_report).
REPORT_THREADS = 8

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #222;
       line-height: 1.4; }
.wide { overflow-x: auto; max-width: 100%; }
.scale { display: inline-flex; align-items: center; gap: .4em; margin-right: 2em; font-size: .9em; }
.swatch { display: inline-block; width: .9em; height: .9em; vertical-align: middle; border: 1px solid #999; }
.thumbs figure { width: 210px; }
h1 { border-bottom: 2px solid #345; padding-bottom: .2em; }
h2 { margin-top: 1.8em; color: #345; border-bottom: 1px solid #ccd; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccd; padding: .25em .6em; text-align: right; }
th { background: #eef1f6; }
td.text, th.text { text-align: left; }
td.text { overflow-wrap: break-word; max-width: 40em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3em 0; }
.note { color: #666; font-style: italic; }
.cm { display: inline-block; margin-right: 2em; vertical-align: top; }
figure { display: inline-block; vertical-align: top; max-width: 1100px; margin: .5em 1em .5em 0; }
figcaption { font-size: .85em; color: #444; overflow-wrap: anywhere; }
img { max-width: 100%; }
td.best { font-weight: 700; background: #e6f2e6; }
"""


@dataclass(frozen=True)
class GalleryItem:
    """One localisation to show: ``image`` (a path or an RGB/grey array), the boolean ``gt_mask`` and the
    probability map ``prob_map``, both at the image's original resolution, and a ``caption``."""
    image: str | Path | np.ndarray
    gt_mask: np.ndarray
    prob_map: np.ndarray
    caption: str
    errors_at: float | None = None  # the pixel threshold: draw the TP / FP / FN map beside the overlay


@dataclass(frozen=True)
class Example:
    """One picture of the examples section (runs with or without heatmaps): an image file, its caption,
    and the group it belongs to (e.g. "surest fakes", "missed fakes")."""
    image: str | Path
    caption: str
    group: str


@dataclass
class ReportTables:
    """The report's tables as data: per score column the per-method table and confusion counts
    (``{"0.5": {...}, "tuned": {...}}``, ``tuned`` only with a threshold); the mask-area table when
    the rows carry ``mask_area`` and pixel metrics, else None."""
    methods: dict[str, pd.DataFrame]
    confusion: dict[str, dict[str, dict[str, int]]]
    mask_area: pd.DataFrame | None


@dataclass
class Report:
    path: Path
    tables: ReportTables = field(repr=False)


def format_value(value: Any) -> str:
    """Floats to 4 decimals, NaN / None / missing to "—" (an em dash), everything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def html_table(frame: pd.DataFrame, caption: str | None = None, text_columns: Iterable[str] = ()) -> str:
    """A plain HTML table of ``frame`` (header = column names, escaped); ``text_columns`` align left."""
    text = set(text_columns)

    def cls(column: str) -> str:
        return ' class="text"' if column in text else ""

    head = "".join(f"<th{cls(c)}>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td{cls(c)}>{html.escape(format_value(v))}</td>" for c, v in zip(frame.columns, row))
                   + "</tr>" for row in frame.itertuples(index=False))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    # A table wider than the window scrolls inside its own box instead of widening the page.
    return f'<div class="wide"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _clean_thresholds(score_columns: Sequence[str], thresholds: Mapping[str, float | None] | None) -> dict[str, float]:
    """Keep the usable tuned thresholds; NaN (the CSV's "no validation set") counts as none."""
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(score_columns))
    if unknown:
        raise ValueError(f"thresholds given for {unknown}, which are not among score_columns {list(score_columns)}")
    return {k: float(v) for k, v in thresholds.items() if v is not None and not math.isnan(float(v))}


def report_tables(rows: Sequence[Mapping[str, Any]], score_columns: Sequence[str],
                  thresholds: Mapping[str, float | None] | None = None,
                  method_names: Mapping[str, str] | None = None) -> ReportTables:
    """Compute every table of the report (no HTML, no pictures)."""
    if not score_columns:
        raise ValueError("report needs at least one score column (e.g. ['p_fake'] or ['p_fake_lm', 'p_fake_head'])")
    frame = rows_frame(rows, score_columns)
    tuned = _clean_thresholds(score_columns, thresholds)
    methods = {c: method_table(rows, c, tuned.get(c), method_names) for c in score_columns}
    confusion = {c: {"0.5": confusion_counts(rows, c, 0.5),
                     **({"tuned": confusion_counts(rows, c, tuned[c])} if c in tuned else {})} for c in score_columns}
    has_area = {"mask_area", "pixel_f1", "pixel_iou"} <= set(frame.columns)
    return ReportTables(methods, confusion, mask_area_table(rows) if has_area else None)


def row_caption(row: Mapping[str, Any], score_columns: Sequence[str]) -> str:
    """A gallery caption from a per-image row: file name, pixel IoU / F1, mask area and scores."""
    parts = [os.path.basename(str(row.get("image_path", "?")))]
    parts += [f"{k} {format_value(row[k])}" for k in ("pixel_iou", "pixel_f1", "mask_area") if k in row]
    parts += [f"{c} {format_value(row[c])}" for c in score_columns if c in row]
    return " · ".join(parts)


def _run_section(title_rows: Mapping[str, Any], frame: pd.DataFrame) -> str:
    counts = {"images": len(frame), "fakes": int(frame["label"].sum()), "reals": int((frame["label"] == 0).sum())}
    facts = {**title_rows, **counts}
    info = pd.DataFrame({"key": list(facts), "value": list(facts.values())}, dtype=object)
    return html_table(info, text_columns=("key", "value"))


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return note("no metrics given")
    # object dtype keeps counts as integers next to float metrics
    table = pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())}, dtype=object)
    return html_table(table, text_columns=("metric",))


def _curves_section(frame: pd.DataFrame, score_columns: Sequence[str]) -> str:
    y = frame["label"].to_numpy()
    if y.min() == y.max():
        return note(f"only one class among the {len(y)} images: ROC and PR curves are undefined")
    curves = [(c, y, frame[c].to_numpy(dtype=np.float64)) for c in score_columns]
    return img(roc_pr_figure(curves), "ROC and PR curves")


def _confusion_html(counts: Mapping[str, int], caption: str) -> str:
    cells = pd.DataFrame({"": ["true real", "true fake"], "called real": [counts["tn"], counts["fn"]],
                          "called fake": [counts["fp"], counts["tp"]]})
    return f'<div class="cm">{html_table(cells, caption, text_columns=("",))}</div>'


def _confusion_section(tables: ReportTables, tuned: Mapping[str, float]) -> str:
    parts = []
    for column, by_threshold in tables.confusion.items():
        parts.append(f"<h3>{html.escape(column)}</h3>" + _confusion_html(by_threshold["0.5"], f"{column} >= 0.5"))
        if "tuned" in by_threshold:
            parts.append(_confusion_html(by_threshold["tuned"], f"{column} >= tuned {tuned[column]:.4f}"))
        else:
            parts.append(note(NO_TUNED))
    return "\n".join(parts)


def _methods_section(tables: ReportTables, names_note: str | None) -> str:
    source = note(names_note or "Methods by number: put method_names.json ({\"1\": \"name\", ...}) in the data "
                  "folder to show their names (the data set ships no list of its methods).")
    intro = source + note("Groups from the file name (fakes {method}__{src}__{dst}__frame{N}, reals "
                          "image__{k}__{id}__frame{N}); auroc: the method's fakes against all reals; recall: share "
                          "of its fakes called fake; fpr: share of its reals called fake; pixel means over its fakes "
                          "with a non-empty mask.")
    return intro + "".join(html_table(t, f"score {c}", text_columns=("method", "name"))
                           for c, t in tables.methods.items())


def _area_section(tables: ReportTables, pixel_note: str | None) -> str:
    if tables.mask_area is None:
        if pixel_note:
            return note(pixel_note)
        return note("not available: the rows need mask_area (fraction of the image in the binarised mask), "
                    "pixel_f1 and pixel_iou")
    return (note("Fakes by the fraction of the image their binarised mask covers; empty masks counted, not averaged.")
            + html_table(tables.mask_area, text_columns=("bucket",)))


def colour_legend(errors_at: float | None) -> str:
    """The overlay's colour scale, and with ``errors_at`` the error map's colours."""
    parts = [f'<span class="scale">overlay colour, P(forged pixel): 0 {img(heat_scale_uri(), "colour scale")} 1</span>']
    if errors_at is not None:
        names = {"TP": "found", "FP": "false alarm", "FN": "missed", "TN": "correctly left out"}
        swatches = " ".join(f'<span class="swatch" style="background: rgb{ERROR_COLOURS[k]}"></span> {k} {names[k]}'
                            for k in ERROR_COLOURS)
        parts.append(f'<span class="scale">error map at pixel threshold {errors_at:g}: {swatches}</span>')
    return "<p>" + "".join(parts) + "</p>"


def _panel(item: GalleryItem) -> str:
    uri = gallery_panel(item.image, item.gt_mask, item.prob_map, name=item.caption, errors_at=item.errors_at)
    return f"<figure>{img(uri, item.caption)}<figcaption>{html.escape(item.caption)}</figcaption></figure>"


def _gallery_section(best: Sequence[GalleryItem], worst: Sequence[GalleryItem], pixel_note: str | None,
                     panel: Callable[[GalleryItem], str]) -> str:
    if not best and not worst:
        return note(pixel_note or "no gallery items given")
    errors_at = next((i.errors_at for i in [*best, *worst] if i.errors_at is not None), None)
    layout = "image | ground truth | heatmap overlay" + (" | error map" if errors_at is not None else "")
    parts = [note(f"Each entry: {layout}."), colour_legend(errors_at)]
    for title, items in (("Best (highest pixel IoU)", best), ("Worst (lowest pixel IoU)", worst)):
        parts.append(f"<h3>{title}</h3>")
        parts += map(panel, items)
    return "\n".join(parts)


def _false_alarm_section(items: Sequence[GalleryItem], pixel_note: str | None,
                         panel: Callable[[GalleryItem], str]) -> str:
    if pixel_note:
        return note(pixel_note)
    if not items:
        return note("no authentic image has a pixel called forged: no false alarms to show")
    errors_at = next((i.errors_at for i in items if i.errors_at is not None), None)
    return "\n".join([note("Authentic images with the largest share of pixels called forged (their ground truth is "
                            "empty, so every red pixel of the error map is a false alarm)."), colour_legend(errors_at),
                      *map(panel, items)])


def _thumbnail(example: Example) -> str | None:
    """The example's figure, None when its image cannot be opened."""
    try:
        uri = thumbnail_uri(example.image)
    except OSError:
        return None
    return f"<figure>{img(uri, example.caption)}<figcaption>{html.escape(example.caption)}</figcaption></figure>"


def _examples_section(examples: Sequence[Example], drawn: Sequence[str | None]) -> str:
    """``drawn``: each example's :func:`_thumbnail`."""
    if not examples:
        return note("no examples given")
    parts, unreadable = [], drawn.count(None)
    for group in dict.fromkeys(e.group for e in examples):
        figures = [f for e, f in zip(examples, drawn) if e.group == group and f is not None]
        parts.append(f"<h3>{html.escape(group)}</h3><div class=\"thumbs\">{''.join(figures)}</div>")
    if unreadable:
        parts.append(note(f"{unreadable} example image(s) could not be opened and are left out"))
    return "\n".join(parts)


def render_report(*, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], score_columns: Sequence[str],
                  thresholds: Mapping[str, float | None] | None = None, title: str = "Evaluation report",
                  description: Mapping[str, Any] | None = None, gallery_best: Sequence[GalleryItem] = (),
                  gallery_worst: Sequence[GalleryItem] = (), false_alarms: Sequence[GalleryItem] = (),
                  examples: Sequence[Example] = (), pixel_note: str | None = None,
                  method_names: Mapping[str, str] | None = None, method_names_note: str | None = None,
                  extra_sections: Sequence[tuple[str, str]] = ()) -> tuple[str, ReportTables]:
    """The report page as a string, and its tables. See ``write_report`` for the arguments."""
    frame = rows_frame(rows, score_columns)
    # The pictures (the curves figure, each gallery panel and thumbnail: image resizing and PNG encoding, which
    # release the GIL) are drawn on threads while the tables are computed: the report is the last thing an
    # evaluation writes, so its time is the whole run's tail. The page is the one drawn in order.
    with ThreadPoolExecutor(max_workers=REPORT_THREADS) as pool:
        curves = pool.submit(_curves_section, frame, score_columns)
        panels = {id(item): pool.submit(_panel, item) for item in [*gallery_best, *gallery_worst, *false_alarms]}
        thumbnails = [pool.submit(_thumbnail, example) for example in examples]
        tables = report_tables(rows, score_columns, thresholds, method_names)
        tuned = _clean_thresholds(score_columns, thresholds)

        def panel(item: GalleryItem) -> str:
            return panels[id(item)].result()
        sections = (_run_section(description or {}, frame), _metrics_section(metrics),
                    curves.result(), _confusion_section(tables, tuned),
                    _methods_section(tables, method_names_note),
                    _area_section(tables, pixel_note), _gallery_section(gallery_best, gallery_worst, pixel_note, panel),
                    _false_alarm_section(false_alarms, pixel_note, panel),
                    _examples_section(examples, [t.result() for t in thumbnails]))
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}"
                     for heading, content in [*zip(HEADINGS, sections), *extra_sections])
    return html_page(title, body), tables


def write_report(out_path: str | os.PathLike, *, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 score_columns: Sequence[str], thresholds: Mapping[str, float | None] | None = None,
                 title: str = "Evaluation report", description: Mapping[str, Any] | None = None,
                 gallery_best: Sequence[GalleryItem] = (), gallery_worst: Sequence[GalleryItem] = (),
                 false_alarms: Sequence[GalleryItem] = (), examples: Sequence[Example] = (),
                 pixel_note: str | None = None, extra_sections: Sequence[tuple[str, str]] = (),
                 method_names: Mapping[str, str] | None = None, method_names_note: str | None = None) -> Report:
    """Write the self-contained report to ``out_path`` (atomically) and return its path and tables.

    ``metrics``: the run's metrics dict (the CSV row's metrics; shown in its order, names as given).
    ``rows``: per-image dicts (columns in ``breakdown``). ``score_columns``: the P(fake) columns to
    plot and tabulate. ``thresholds``: tuned threshold per score column (None / NaN / absent: no
    validation set). ``description``: run facts shown first (dataset, checkpoint, ...); image
    counts are added from ``rows``. ``gallery_best`` / ``gallery_worst``: pictures chosen with
    ``breakdown.select_gallery``. ``false_alarms``: authentic images with pixels called forged
    (``tables.select_false_alarms``). ``examples``: image thumbnails of the surest calls and worst
    mistakes (``tables.select_examples``). ``pixel_note``: why a run has no pixel-level sections (a
    pipeline without heatmaps), shown there instead of the generic notes. ``extra_sections``: (heading,
    HTML) pairs appended after the standard sections (the robustness section, ``report.robustness``).
    ``method_names`` / ``method_names_note``: ``data.methods.read_method_names``'s names and note.
    """
    page, tables = render_report(metrics=metrics, rows=rows, score_columns=score_columns, thresholds=thresholds,
                                 title=title, description=description, gallery_best=gallery_best,
                                 gallery_worst=gallery_worst, false_alarms=false_alarms, examples=examples,
                                 pixel_note=pixel_note, extra_sections=extra_sections, method_names=method_names,
                                 method_names_note=method_names_note)
    return Report(atomic_write_text(out_path, page), tables)


# ---------------------------------------------------------------------------------------- benchmark_sets.py
BENCHMARK_HEADING = "Benchmark"
# Columns where the best set is marked, by the metric's name without a Task 3 ``lm_`` / ``head_`` prefix.
HIGHER_IS_BETTER = ("auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned", "f1@tuned", "pixel_f1", "pixel_iou", "ciou",
                    "cdice", "pixel_f1_pooled", "pixel_iou_pooled", "pixel_auroc", "imdlbenco_pixel_f1",
                    "imdlbenco_pixel_iou", "score", "head_score")
LOWER_IS_BETTER = ("false_alarm",)
TEXT_COLUMNS = ("set", "format", "error")


def metric_direction(column: str) -> str | None:
    """``"higher"`` or ``"lower"`` for a quality metric (the best set is marked), None for any other column."""
    base = column.removeprefix("lm_").removeprefix("head_") if column != "head_score" else column
    if base in HIGHER_IS_BETTER:
        return "higher"
    return "lower" if base in LOWER_IS_BETTER else None


def best_rows(table: Sequence[Mapping[str, Any]], column: str) -> set[int]:
    """The rows holding the best finite value of a quality ``column`` (ties all marked; none if no value)."""
    direction = metric_direction(column)
    values = {i: float(row[column]) for i, row in enumerate(table)
              if isinstance(row.get(column), (int, float, np.floating)) and math.isfinite(float(row[column]))}
    if direction is None or not values:
        return set()
    best = max(values.values()) if direction == "higher" else min(values.values())
    return {i for i, v in values.items() if v == best}


@dataclass(frozen=True)
class BenchmarkSection:
    """One set of a benchmark report: its facts (index, format, counts, or why it failed), its metrics
    (the CSV's names) and its per-image rows with the score columns to draw ROC / PR curves of (None for
    a set that failed)."""
    name: str
    facts: Mapping[str, Any]
    metrics: Mapping[str, Any]
    rows: Sequence[Mapping[str, Any]] | None
    score_columns: Sequence[str]


def _benchmark_table(table: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    best = {c: best_rows(table, c) for c in columns}
    head = "".join(f'<th class="text">{html.escape(c)}</th>' if c in TEXT_COLUMNS else f"<th>{html.escape(c)}</th>"
                   for c in columns)
    body = []
    for i, row in enumerate(table):
        cells = []
        for c in columns:
            text = html.escape(format_value(row.get(c)))
            cells.append(f'<td class="text">{text}</td>' if c in TEXT_COLUMNS
                         else f'<td class="best">{text}</td>' if i in best[c] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _set_section(section: BenchmarkSection) -> str:
    facts = pd.DataFrame({"key": list(section.facts), "value": list(section.facts.values())}, dtype=object)
    parts = [html_table(facts, text_columns=("key", "value"))]
    if section.rows is None:
        return "\n".join(parts)
    frame = rows_frame(section.rows, section.score_columns)
    parts += [_curves_section(frame, section.score_columns), _metrics_section(section.metrics)]
    return "\n".join(parts)


def write_benchmark_report(out_path: str | os.PathLike, *, title: str, description: Mapping[str, Any],
                           table: Sequence[Mapping[str, Any]], columns: Sequence[str],
                           sections: Sequence[BenchmarkSection],
                           extra_sections: Sequence[tuple[str, str]] = ()) -> Path:
    """``benchmark_sets.py``'s self-contained report: the run's facts and the table on top (one row per set,
    ``columns`` of the benchmark CSV, the best value of each quality column marked), then one section per
    set with its facts, ROC / PR curves and every metric; then ``extra_sections`` ((heading, HTML) pairs)."""
    info = pd.DataFrame({"key": list(description), "value": list(description.values())}, dtype=object)
    legend = note("Best per column in bold (highest; lowest for false_alarm). Columns and the benchmark each "
                  "convention follows: README, 'Benchmark tables'.")
    body = [f"<h2>{BENCHMARK_HEADING}</h2>", html_table(info, text_columns=("key", "value")), legend,
            _benchmark_table(table, columns)]
    for section in sections:
        body.append(f"<h2>{html.escape(section.name)}</h2>\n{_set_section(section)}")
    body += [f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in extra_sections]
    return atomic_write_text(out_path, html_page(title, "\n".join(body)))
