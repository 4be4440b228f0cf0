"""``index.html`` of a predict.py output folder: every image as a card (a preview of the original, the
heatmap overlay with its colour scale, P(fake) and the verdict), sortable by score and filterable by
verdict, and the skipped files with their reasons.

Sorting and filtering use CSS only (radio buttons and the flex ``order`` of each card), so the page works
with scripts switched off. The pictures are files beside the page (``previews/``, ``overlays/``), named
relative to the output folder, so the folder can be moved or copied as a whole.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from qwen_forensics.files import atomic_write_text
from qwen_forensics.report.pictures import HEAT_CSS_GRADIENT

INDEX_HTML = "index.html"
PREVIEWS_DIR = "previews"
PREVIEW_SIDE = 320  # long side of the original's preview in the gallery, in pixels
# An image enlarged more than this to fill the letterbox carries too few pixels for the model's answer to mean much.
ENLARGED_WARNING = 4.0

STYLE = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1em 2em; color: #222; }}
h1 {{ border-bottom: 2px solid #345; padding-bottom: .2em; }}
h2 {{ color: #345; border-bottom: 1px solid #ccd; margin-top: 1.5em; }}
.controls {{ margin: .6em 0; }}
.controls label {{ margin-right: 1em; cursor: pointer; }}
.scale {{ display: inline-flex; align-items: center; gap: .4em; font-size: .85em; margin-left: 1em; }}
.bar {{ width: 160px; height: 12px; background: {HEAT_CSS_GRADIENT}; border: 1px solid #999; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ border: 1px solid #ccd; border-radius: 4px; padding: 6px; width: 340px; order: var(--by-score); }}
.card.fake {{ border-left: 5px solid #c0392b; }}
.card.real {{ border-left: 5px solid #2e8b57; }}
.card img {{ width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; }}
.card .pics {{ display: flex; gap: 6px; }}
.card .name {{ font-size: .8em; overflow-wrap: anywhere; color: #444; }}
.card .score {{ font-weight: 600; }}
.warn {{ color: #a05a00; font-size: .8em; }}
input[name=sort], input[name=show] {{ display: none; }}
#sort-low:checked ~ .gallery .card {{ order: calc(-1 * var(--by-score)); }}
#sort-input:checked ~ .gallery .card {{ order: var(--by-input); }}
#show-fake:checked ~ .gallery .card.real, #show-real:checked ~ .gallery .card.fake {{ display: none; }}
#sort-high:checked ~ .controls label[for=sort-high], #sort-low:checked ~ .controls label[for=sort-low],
#sort-input:checked ~ .controls label[for=sort-input], #show-all:checked ~ .controls label[for=show-all],
#show-fake:checked ~ .controls label[for=show-fake], #show-real:checked ~ .controls label[for=show-real]
  {{ font-weight: 700; text-decoration: underline; }}
table {{ border-collapse: collapse; font-size: .9em; }}
th, td {{ border: 1px solid #ccd; padding: .25em .6em; text-align: left; }}
th {{ background: #eef1f6; }}
"""


def write_preview(image_path: str | Path, out_path: Path, side: int = PREVIEW_SIDE) -> None:
    """A JPEG of the image at most ``side`` px on its long side (JPEG decoding at reduced size: fast)."""
    with Image.open(image_path) as img:
        img.draft("RGB", (side, side))
        preview = img.convert("RGB")
        preview.thumbnail((side, side))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    preview.save(out_path, quality=85)


def _card(row: Mapping[str, Any], rank: int, position: int, preview: str) -> str:
    verdict = row["verdict"]
    name = html.escape(Path(row["image"]).name)
    pictures = f'<img src="{html.escape(preview)}" alt="original {name}" title="original">'
    if row.get("overlay_jpg"):
        overlay = html.escape(row["overlay_jpg"])
        pictures += f'<img src="{overlay}" alt="heatmap overlay {name}" title="heatmap overlay">'
    scores = [f'<span class="score">P(fake) {row["p_fake"]:.3f}</span> &middot; {verdict}']
    if row.get("perturbation") not in (None, "none"):
        scores.append(f"under {html.escape(str(row['perturbation']))} {html.escape(str(row.get('level', '')))}")
    if "p_fake_head" in row and "p_fake_lm" in row:
        scores.append(f"heads {row['p_fake_head']:.3f}, LM {row['p_fake_lm']:.3f}")
    if row.get("answer_text"):
        scores.append(f"answer: {html.escape(str(row['answer_text']))}")
    if row.get("letterbox_scale", 0) > ENLARGED_WARNING:
        scores.append(f'<span class="warn">enlarged {row["letterbox_scale"]:.1f}x: too small for a reliable '
                      f'result</span>')
    lines = "<br>".join(scores)
    return (f'<div class="card {verdict}" style="--by-score: {rank}; --by-input: {position}">'
            f'<div class="pics">{pictures}</div><div class="name" title="{html.escape(str(row["image"]))}">{name} '
            f'({row["width"]}x{row["height"]})</div><div>{lines}</div></div>')


def write_prediction_index(out_dir: Path, rows: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, str]],
                           *, title: str, description: Sequence[str], previews: Sequence[str]) -> Path:
    """Write ``index.html`` into ``out_dir``; ``previews[k]`` is row k's preview picture, relative to
    ``out_dir``; ``skipped``: ``{"path", "reason"}`` of each file not predicted."""
    by_score = sorted(range(len(rows)), key=lambda k: -rows[k]["p_fake"])
    rank = {k: r for r, k in enumerate(by_score)}
    fakes = sum(row["verdict"] == "fake" for row in rows)
    has_overlays = any(row.get("overlay_jpg") for row in rows)
    scale = ('<span class="scale">overlay colour: P(forged pixel) 0 <span class="bar"></span> 1</span>'
             if has_overlays else "")
    radios = "".join(f'<input type="radio" name="{group}" id="{group}-{value}"{" checked" if first else ""}>'
                     for group, values in (("sort", ("high", "low", "input")), ("show", ("all", "fake", "real")))
                     for first, value in zip((True, False, False), values))
    controls = ('<div class="controls">sort: <label for="sort-high">P(fake), highest first</label>'
                '<label for="sort-low">lowest first</label><label for="sort-input">input order</label>'
                f' &nbsp; show: <label for="show-all">all ({len(rows)})</label>'
                f'<label for="show-fake">fake ({fakes})</label>'
                f'<label for="show-real">real ({len(rows) - fakes})</label>'
                f"{scale}</div>")
    cards = "".join(_card(row, rank[k], k, previews[k]) for k, row in enumerate(rows))
    info = "".join(f"<li>{html.escape(line)}</li>" for line in description)
    body = [f"<ul>{info}</ul>", "<h2>Images</h2>", radios, controls, f'<div class="gallery">{cards}</div>']
    body.append("<h2>Skipped files</h2>")
    if skipped:
        body.append("<table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>"
                    + "".join(f"<tr><td>{html.escape(str(s['path']))}</td><td>{html.escape(str(s['reason']))}</td></tr>"
                              for s in skipped) + "</tbody></table>")
    else:
        body.append("<p>none</p>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{''.join(body)}\n</body></html>\n")
    path = out_dir / INDEX_HTML
    atomic_write_text(path, page)
    return path
