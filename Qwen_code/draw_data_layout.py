"""Draw ``image.png`` (repo root): the folder tree the scripts expect under /root/autodl-tmp.

The README shows this picture, so it is generated here rather than kept as a screenshot, and
changes to the layout are one edit away. PIL only; Pillow >= 10.1 for a scalable default font.

    python Qwen_code/draw_data_layout.py            # writes <repo>/image.png from any cwd
    python Qwen_code/draw_data_layout.py --out x.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "image.png"

WIDTH = 1500
ROW = 38
INDENT = 34
LEFT = 40
TOP = 92
NOTE_X = 640

INK = (33, 37, 41)
MUTED = (120, 126, 133)
LINE = (190, 195, 200)
ACCENT = (25, 103, 210)
FOLDER = (244, 196, 72)
FOLDER_EDGE = (204, 150, 30)
HEADER = (237, 241, 246)
CODE_BG = (246, 247, 249)


@dataclass(frozen=True)
class Entry:
    depth: int
    name: str
    folder: bool
    note: str = ""
    generated: bool = False


TREE = (
    Entry(0, "/root/autodl-tmp/", True, "working root (override: --root DIR or QWEN_FORENSICS_ROOT)"),
    Entry(1, "data/", True, "data set; every path inside the JSON files is relative to data/"),
    Entry(2, "trainingset2/", True),
    Entry(3, "image/", True, "video frames *.jpg, real and fake, any size (e.g. 720x1280)"),
    Entry(3, "spatial_localize/", True, "soft masks of the fakes, JPEG, same file name as the frame"),
    Entry(3, "annotation.json", False, "all records of trainingset2"),
    Entry(3, "train_idx.json", False, "training records (subset of annotation.json)"),
    Entry(3, "val_idx.json", False, "validation records; no video may also be in train_idx"),
    Entry(2, "testset2/", True),
    Entry(3, "image/", True, "test frames *.jpg"),
    Entry(3, "spatial_localize/", True, "soft masks of the test fakes"),
    Entry(3, "annotation.json", False, "test records"),
    Entry(1, "Qwen2.5-VL-7B-Instruct/", True, "model folder, Hugging Face format (config, *.safetensors, tokenizer)"),
    Entry(1, "Qwen_code/", True, "this repository's code: shared library, task scripts, JSON configs"),
    Entry(1, "task1_modular_lora/", True, "written by the runs: weights, metric CSVs", generated=True),
    Entry(1, "task2_lm_lora/", True, "written by the runs", generated=True),
    Entry(1, "task3_hybrid_lora/", True, "written by the runs", generated=True),
)

RECORDS = (
    '{"image_path": "trainingset2/image/7__<srcid>__<dstid>__frame00042.jpg",',
    ' "mask_path": "trainingset2/spatial_localize/7__<srcid>__<dstid>__frame00042.jpg", "label": 1}',
    '{"image_path": "trainingset2/image/image__3__<id>__frame00120.jpg", "mask_path": "720x1280", "label": 0}',
)

NOTES = (
    ("label 1 (fake):", 'mask_path is the soft mask (grey = how much a pixel changed); default binarisation >= 0.2 * p99.'),
    ("label 0 (real):", 'mask_path is the size "HxW", height first (e.g. "720x1280"); the mask is all zeros.'),
    ("file names:", "fake {method}__{srcid}__{dstid}__frame{NNNNN}.jpg (method 1..15, ids 32 hex),"),
    ("", "real image__{k}__{id}__frame{NNNNN}.jpg; the video is the part before __frame."),
)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _folder_icon(draw: ImageDraw.ImageDraw, x: int, y: int, faded: bool) -> None:
    fill = (250, 226, 160) if faded else FOLDER
    edge = (225, 195, 120) if faded else FOLDER_EDGE
    draw.rounded_rectangle([x, y + 2, x + 10, y + 8], radius=2, fill=fill, outline=edge)
    draw.rounded_rectangle([x, y + 5, x + 22, y + 20], radius=2, fill=fill, outline=edge)


def _file_icon(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.polygon([(x + 2, y), (x + 13, y), (x + 19, y + 6), (x + 19, y + 21), (x + 2, y + 21)],
                 fill=(255, 255, 255), outline=MUTED)
    draw.line([(x + 13, y), (x + 13, y + 6), (x + 19, y + 6)], fill=MUTED)
    draw.text((x + 5, y + 9), "{ }", font=_font(9), fill=ACCENT)


def _draw_tree(draw: ImageDraw.ImageDraw) -> int:
    name_font, note_font = _font(21), _font(17)
    icon_x = [LEFT + INDENT * d for d in range(4)]
    for i, entry in enumerate(TREE):
        y = TOP + i * ROW
        x = icon_x[entry.depth]
        if entry.depth:
            # Connector: vertical line from the parent's icon down to this row, then a stub.
            parent = max(j for j in range(i) if TREE[j].depth == entry.depth - 1)
            px = icon_x[entry.depth - 1] + 11
            draw.line([(px, TOP + parent * ROW + 24), (px, y + 11)], fill=LINE, width=2)
            draw.line([(px, y + 11), (x - 4, y + 11)], fill=LINE, width=2)
        if entry.folder:
            _folder_icon(draw, x, y, entry.generated)
        else:
            _file_icon(draw, x, y)
        colour = MUTED if entry.generated else INK
        draw.text((x + 32, y + 11), entry.name, font=name_font, fill=colour, anchor="lm")
        if entry.note:
            draw.line([(NOTE_X - 24, y + 11), (NOTE_X - 10, y + 11)], fill=LINE, width=1)
            draw.text((NOTE_X, y + 11), entry.note, font=note_font,
                      fill=MUTED if entry.generated else (70, 76, 84), anchor="lm")
    return TOP + len(TREE) * ROW


def draw_layout() -> Image.Image:
    """Render the data-layout picture and return it."""
    height = TOP + len(TREE) * ROW + 40 + 34 + len(RECORDS) * 27 + 26 + len(NOTES) * 27 + 24
    img = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, WIDTH, 62], fill=HEADER)
    draw.line([(0, 62), (WIDTH, 62)], fill=LINE, width=1)
    draw.text((LEFT, 31), "Expected layout under /root/autodl-tmp", font=_font(26), fill=INK, anchor="lm")
    draw.text((WIDTH - LEFT, 31), "image.png  -  drawn by Qwen_code/draw_data_layout.py",
              font=_font(15), fill=MUTED, anchor="rm")

    y = _draw_tree(draw) + 30
    draw.text((LEFT, y), "Every JSON file is a list of records, for example:", font=_font(19), fill=INK)
    y += 34
    box_h = len(RECORDS) * 27 + 14
    draw.rounded_rectangle([LEFT, y, WIDTH - LEFT, y + box_h], radius=8, fill=CODE_BG, outline=LINE)
    for k, line in enumerate(RECORDS):
        draw.text((LEFT + 16, y + 8 + k * 27), line, font=_font(17), fill=ACCENT)
    y += box_h + 14
    for label, text in NOTES:
        draw.text((LEFT, y), label, font=_font(17), fill=INK)
        draw.text((LEFT + 150, y), text, font=_font(17), fill=(70, 76, 84))
        y += 27
    return img


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output PNG (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    draw_layout().save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
