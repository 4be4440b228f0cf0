"""The index formats the scripts read, told apart by their content, each turned into entries of our own
record shape (``records.load_index`` makes the Records, ``validate`` checks them all the same way).

- ``records`` (our index): a JSON list of ``{"image_path", "mask_path": path | "HxW", "label"}``, paths
  relative to the data root.
- ``imdl_json`` (IMDLBenCo's ``JsonDataset``): a JSON list of ``[image_path, mask_path]`` pairs, the mask
  ``"Negative"`` for an authentic image. Relative paths are taken relative to the JSON file's folder
  (IMDLBenCo itself opens them relative to the working directory, which breaks as soon as one runs from
  elsewhere); every path becomes absolute here, so the data root plays no part.
- ``imdl_folder`` (IMDLBenCo's ``ManiDataset`` folder): ``Tp/`` images and ``Gt/`` masks, with or without
  ``Au/`` authentic images. IMDLBenCo pairs the two sorted listings by position, so one stray or missing
  file shifts every later pair; here a mask belongs to the ``Tp/`` image of the same stem, written as it
  is or followed by one of :data:`MASK_SUFFIXES` (CASIA's ``X_gt.png``, IMD2020's ``X_mask.png``), case
  ignored. A ``Tp/`` image without a mask is authentic in a folder without ``Au/`` (where the authentic
  images of a set have nowhere else to be), and a fake with a missing mask in one with ``Au/`` (validation
  reports it, the bad-sample policy fails or skips it). Masks no image claims are listed as unpaired.

A JSON list is read as pairs when more of its entries are JSON arrays than objects; entries of the other
shape become defective entries that validation reports, with the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

RECORDS, IMDL_JSON, IMDL_FOLDER = "records", "imdl_json", "imdl_folder"
FORMAT_NAMES = {
    RECORDS: "our index: JSON records {image_path, mask_path | \"HxW\", label}, paths relative to data_root",
    IMDL_JSON: "IMDLBenCo JsonDataset: JSON pairs [image, mask | \"Negative\"], paths relative to the file's folder",
    IMDL_FOLDER: "IMDLBenCo ManiDataset folder: Tp/ images, Gt/ masks paired by file stem",
}
NEGATIVE = "Negative"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# After the image's stem, in this order of preference when a folder holds several.
MASK_SUFFIXES = ("", "_gt", "_mask", "-gt", "-mask", "_groundtruth")
TAMPERED_DIR, MASK_DIR, AUTHENTIC_DIR = "Tp", "Gt", "Au"


class BadIndex(SystemExit):
    """An index that cannot be used as it is: a file or folder that is not an index in any format we read,
    or, under ``on_bad_sample: "fail"``, one with bad records (``validate``). A ``SystemExit``: the scripts
    stop before any model loads with this message, which names the file, every problem and the fix, and
    no traceback."""


@dataclass(frozen=True)
class IndexEntry:
    """One entry, in our record shape (``value``, what ``records.record_from_json`` reads) unless ``defect``
    says why it is not a record. ``written``: the entry as a foreign index has it (skipped lists show it);
    ``size_from_image``: an authentic image whose all-zero mask takes the image's own size (the foreign
    formats never state it)."""
    value: object
    written: object = None
    defect: str | None = None
    size_from_image: bool = False


@dataclass(frozen=True)
class IndexSource:
    """What an index file or folder holds: its format, its entries in order, and for a folder the masks
    that no image claims and what the pairing decided (printed when it is read)."""
    path: Path
    format: str
    entries: list[IndexEntry]
    unpaired_masks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _absolute(folder: Path, path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(folder / path)


def _pair_entry(obj: object, folder: Path) -> IndexEntry:
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(v, str) and v for v in obj)):
        return IndexEntry(None, obj, f'expected a pair [image_path, mask_path or "{NEGATIVE}"] of two non-empty '
                                     f"strings, got {_json_text(obj)}: write each entry as such a pair")
    image, mask = obj
    if mask == NEGATIVE:
        return IndexEntry({"image_path": _absolute(folder, image), "mask_path": None, "label": 0}, obj,
                          size_from_image=True)
    return IndexEntry({"image_path": _absolute(folder, image), "mask_path": _absolute(folder, mask), "label": 1}, obj)


def _read_json(path: Path) -> IndexSource:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadIndex(f"{path}: not valid JSON ({err}); an index is a JSON list of records "
                       '{"image_path", "mask_path", "label"} or of IMDLBenCo pairs [image, mask | "Negative"]: '
                       "fix the index file.") from None
    if not isinstance(data, list):
        raise BadIndex(f"{path}: the top level must be a JSON list of records, got {type(data).__name__} "
                       '(each record {"image_path", "mask_path": path or "HxW", "label": 0 or 1}, or each entry an '
                       'IMDLBenCo pair [image, mask | "Negative"]); fix the index file.')
    pairs = sum(isinstance(obj, list) for obj in data)
    if pairs > sum(isinstance(obj, dict) for obj in data):
        folder = path.parent.absolute()
        return IndexSource(path, IMDL_JSON, [_pair_entry(obj, folder) for obj in data])
    return IndexSource(path, RECORDS, [IndexEntry(obj) for obj in data])


def _subfolder(folder: Path, name: str) -> Path | None:
    """``folder/name``, the name's case ignored (``Tp``, ``tp``, ``TP``)."""
    found = [d for d in folder.iterdir() if d.is_dir() and d.name.lower() == name.lower()]
    return found[0] if found else None


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image-named files of ``folder`` in name order, and the other files (hidden ones left out)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def _read_folder(path: Path) -> IndexSource:
    folder = path.absolute()
    tampered, masks_dir, authentic = (_subfolder(folder, name) for name in (TAMPERED_DIR, MASK_DIR, AUTHENTIC_DIR))
    if tampered is None or masks_dir is None:
        have = ", ".join(sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())) or "no subfolders"
        raise BadIndex(f"{path}: a folder is read as an IMDLBenCo ManiDataset, which needs {TAMPERED_DIR}/ (images) "
                       f"and {MASK_DIR}/ (their masks), optionally {AUTHENTIC_DIR}/ (authentic images); this one has "
                       f"{have}. Point the config at such a folder or at a JSON index.")
    images, other = _image_files(tampered)
    masks, other_masks = _image_files(masks_dir)
    by_stem: dict[str, Path] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem.lower(), mask)
    claimed: set[Path] = set()
    entries, unmatched = [], []
    for image in images:
        found = next((by_stem[key] for key in (image.stem.lower() + s for s in MASK_SUFFIXES) if key in by_stem), None)
        if found is not None:
            claimed.add(found)
            entries.append(IndexEntry({"image_path": str(image), "mask_path": str(found), "label": 1},
                                      [str(image), str(found)]))
        elif authentic is None:
            entries.append(IndexEntry({"image_path": str(image), "mask_path": None, "label": 0}, [str(image), NEGATIVE],
                                      size_from_image=True))
            unmatched.append(image)
        else:
            entries.append(IndexEntry({"image_path": str(image), "mask_path": None, "label": 1}, [str(image), None]))
            unmatched.append(image)
    au_images, au_other = _image_files(authentic) if authentic is not None else ([], [])
    entries += [IndexEntry({"image_path": str(image), "mask_path": None, "label": 0}, [str(image), NEGATIVE],
                           size_from_image=True) for image in au_images]
    looked_for = ", ".join(f"<stem>{s}" for s in MASK_SUFFIXES)
    notes = [f"{len(images)} images in {tampered.name}/, {len(masks)} masks in {masks_dir.name}/"
             + (f", {len(au_images)} authentic images in {authentic.name}/" if authentic is not None else
                f" (no {AUTHENTIC_DIR}/ folder)")]
    if unmatched:
        what = ("read as authentic (no Au/ folder: a Tp/ image without a mask is authentic)" if authentic is None else
                "fakes whose mask is missing (reported by the validation)")
        notes.append(f"{len(unmatched)} {tampered.name}/ images have no mask in {masks_dir.name}/ (looked for "
                     f"{looked_for}, any image extension): {what}; first: {unmatched[0].name}")
    ignored = other + other_masks + au_other
    if ignored:
        notes.append(f"ignored {len(ignored)} files without an image extension ({', '.join(IMAGE_SUFFIXES)}); first: "
                     f"{ignored[0]}")
    unpaired = [str(mask) for mask in masks if mask not in claimed]
    if unpaired:
        notes.append(f"{len(unpaired)} masks in {masks_dir.name}/ belong to no image (reported by the validation); "
                     f"first: {Path(unpaired[0]).name}")
    return IndexSource(path, IMDL_FOLDER, entries, unpaired, notes)


def read_index_source(path: str | os.PathLike) -> IndexSource:
    """The entries of an index in any of the formats (see the module doc), told apart by the content: a
    folder is a ManiDataset, a JSON list of arrays IMDLBenCo pairs, any other JSON list our records. A
    path that is none of these raises :class:`BadIndex` naming it."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise BadIndex(f"index file {path} does not exist; check the annotation path in the config.")
    return _read_json(path)
