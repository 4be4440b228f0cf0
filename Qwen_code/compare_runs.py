"""Compare evaluation runs side by side: the rows of one or more metrics CSVs as a table and bar charts.

    python Qwen_code/compare_runs.py <root>/task1_modular_lora/subtask_vit_head_eval/metrics.csv \
        <root>/task3_hybrid_lora/evaluation/metrics.csv [--out DIR] [--metrics auroc lm_auroc pixel_iou]

Every row of a metrics CSV is one run (the evaluation scripts append one per run; columns differ
between tasks). A run is labelled by the shortest end of its CSV path that tells the given CSVs
apart, plus its row number (1 = first data row), e.g. ``evaluation/metrics.csv#2``; the run list
shows each one's timestamp and dataset. The table has one row per metric and one column per run;
a metric a run lacks is shown as "—". Task 2's seed columns ``acc`` / ``f1`` mean ``acc@0.5`` /
``f1@0.5`` (SPEC 7) and fill those for runs that lack them.

Default metrics: the SPEC 7 metrics (``auroc``, ``ap``, ``acc@0.5`` ... ``score``) and their
Task 3 ``lm_`` / ``head_`` variants, each shown when at least one run has it; ``--metrics`` picks
any CSV columns instead. Prints the table and writes ``compare.html`` (the table plus one bar
chart per metric, all embedded, no external files) into ``--out``, by default the folder of the
first CSV, so the result does not depend on the working directory. Exit code 2 on unreadable input.

``--robustness A.csv B.csv ...``: the ``robustness.csv`` of two or more checkpoints (written by an evaluation
with ``--perturb``), overlaid in one plot per metric (a colour per perturbation, a line style per run,
each run's clean value dashed) with their tables, in the page's Robustness section; metrics CSVs may be
given too, or none.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from qwen_forensics.files import atomic_write_text
from qwen_forensics.report import bar_chart, format_value, html_page, html_table, img, note, robustness_section

SPEC_METRICS = ("auroc", "ap", "acc@0.5", "f1@0.5", "acc@tuned", "f1@tuned", "threshold", "pixel_f1", "pixel_iou",
                "ciou", "cdice", "false_alarm", "num_fake_empty_mask", "score")
SEED_ALIASES = {"acc@0.5": "acc", "f1@0.5": "f1"}
RUN_FACTS = ("timestamp", "dataset", "samples")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="*", type=Path, help="metrics CSV files (one row per run)")
    parser.add_argument("--out", type=Path, help="folder for compare.html (default: the folder of the first CSV)")
    parser.add_argument("--metrics", nargs="+", help="CSV columns to compare (default: SPEC 7 metrics present)")
    parser.add_argument("--robustness", nargs="+", type=Path, default=[], metavar="ROBUSTNESS_CSV",
                        help="robustness.csv files of runs with --perturb: their curves overlaid")
    args = parser.parse_args(argv)
    if not args.csv and not args.robustness:
        parser.error("give metrics CSVs, --robustness CSVs, or both")
    return args


def load_robustness(paths: list[Path]) -> dict[str, list[dict]]:
    """Each robustness.csv's rows (numbers as numbers), by the path's short label. Raises ValueError naming
    the file it cannot read."""
    paths = list(dict.fromkeys(paths))
    tables = {}
    for path, label in zip(paths, short_labels(paths)):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable robustness CSV ({err})") from err
        if not {"set", "perturbation", "level"} <= set(frame.columns):
            raise ValueError(f"{path}: not a robustness.csv (needs the columns set, perturbation, level; an "
                             "evaluation run with --perturb writes one)")
        tables[label] = [{k: (v if k in ("set", "perturbation", "level") else _value(v or None))
                          for k, v in row.items()} for row in frame.to_dict("records")]
    return tables


def short_labels(paths: list[Path]) -> list[str]:
    """Per path, the fewest trailing parts that no other path ends with (the whole path if none)."""
    labels = []
    for path in paths:
        others = [q.parts for q in paths if q != path]
        for n in range(1, len(path.parts) + 1):
            if all(q[-n:] != path.parts[-n:] for q in others):
                labels.append("/".join(path.parts[-n:]))
                break
        else:
            labels.append(str(path))
    return labels


def load_runs(paths: list[Path]) -> pd.DataFrame:
    """One row per run, the union of all CSV columns (as text; blank / nan -> missing), labelled.

    Columns ``run``, ``csv`` and ``row`` are added. Raises ValueError naming the file it cannot read.
    """
    paths = list(dict.fromkeys(paths))
    frames = []
    for path, label in zip(paths, short_labels(paths)):
        if not path.is_file():
            raise ValueError(f"{path}: no such metrics CSV")
        try:
            frame = pd.read_csv(path, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable metrics CSV ({err})") from err
        if frame.empty:
            print(f"note: {path} has a header but no runs", file=sys.stderr)
            continue
        rows = range(1, len(frame) + 1)
        frames.append(frame.assign(run=[f"{label}#{i}" for i in rows], csv=str(path), row=list(rows)))
    if not frames:
        raise ValueError("none of the given CSVs holds a run")
    runs = pd.concat(frames, ignore_index=True, sort=False)
    for target, seed in SEED_ALIASES.items():
        if seed in runs.columns:
            filled = runs[target] if target in runs.columns else pd.Series(pd.NA, index=runs.index, dtype=object)
            runs[target] = filled.fillna(runs[seed])
    return runs.set_index("run")


def default_metrics(runs: pd.DataFrame) -> list[str]:
    """SPEC 7 metrics, each followed by its Task 3 lm_/head_ variants, that some run has."""
    wanted = [name for m in SPEC_METRICS for name in (m, f"lm_{m}", f"head_{m}")]
    present = [m for m in dict.fromkeys(wanted) if m in runs.columns and runs[m].notna().any()]
    return present


def _value(text: object) -> object:
    """A CSV cell as a number when it is one (integers stay integers), else the text; NaN when blank."""
    if text is None or text is pd.NA or (isinstance(text, float) and math.isnan(text)):
        return float("nan")
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
    return text


def comparison_table(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows: metrics; columns: runs; cells: numbers, text, or NaN where the run lacks the metric."""
    data = {run: [_value(runs.at[run, m]) if m in runs.columns else float("nan") for m in metrics] for run in runs.index}
    return pd.DataFrame(data, index=pd.Index(metrics, name="metric"), dtype=object)


def run_list(runs: pd.DataFrame) -> pd.DataFrame:
    facts = [c for c in RUN_FACTS if c in runs.columns]
    return pd.DataFrame({"run": runs.index, "csv": runs["csv"], "row": runs["row"],
                         **{c: runs[c].map(_value) for c in facts}}, dtype=object).reset_index(drop=True)


def render_compare(runs: pd.DataFrame | None, table: pd.DataFrame | None,
                   robustness: dict[str, list[dict]] | None = None) -> str:
    """compare.html: run list, metrics table and one bar chart per metric (when metrics CSVs were given),
    then the overlaid robustness curves (when robustness CSVs were)."""
    tail = ["<h2>Robustness</h2>", robustness_section(robustness)] if robustness else []
    if runs is None:
        return html_page("Run comparison", "\n".join(tail))
    labels = list(table.columns)
    charts = []
    for metric, values in table.iterrows():
        numbers = [float(v) if isinstance(v, (int, float)) else float("nan") for v in values]
        charts.append(img(bar_chart(str(metric), labels, numbers), f"bar chart of {metric}"))
    aliased = [t for t, s in SEED_ALIASES.items() if s in runs.columns and t in table.index]
    body = ["<h2>Runs</h2>", html_table(run_list(runs), text_columns=("run", "csv", "timestamp", "dataset")),
            "<h2>Metrics</h2>", note("— : the run has no value for this metric.")
            + (note(f"{', '.join(aliased)} of runs with only the seed columns acc / f1 come from those.") if aliased else ""),
            html_table(table.reset_index(), text_columns=("metric",)), "<h2>Charts</h2>",
            f'<div class="charts">{"".join(charts)}</div>' if charts else note("no metrics to chart"), *tail]
    return html_page("Run comparison", "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        robustness = load_robustness(args.robustness)
        runs = load_runs(args.csv) if args.csv else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out or (args.csv or args.robustness)[0].parent
    if runs is None:
        out = atomic_write_text(out_dir / "compare.html", render_compare(None, None, robustness))
        print(f"robustness of {', '.join(robustness)}\ncomparison page: {out}")
        return 0
    metrics = list(dict.fromkeys(args.metrics)) if args.metrics else default_metrics(runs)
    for metric in metrics:
        if metric not in runs.columns:
            print(f"note: metric {metric!r} is in none of the CSVs (shown as —)", file=sys.stderr)
    table = comparison_table(runs, metrics)
    printable = pd.concat([run_list(runs).set_index("run").T.drop(index="csv"), table])
    print(printable.apply(lambda column: column.map(format_value)).to_string())
    out = atomic_write_text(out_dir / "compare.html", render_compare(runs, table, robustness))
    print(f"comparison page: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
