"""The manipulation method a ForgeryNet frame comes from, read from its file name.

The repackaged ForgeryNet names encode it (SPEC 2): fakes ``{method}__{srcid}__{dstid}__frame{N}.jpg``
with ``method`` an integer 1..15, reals ``image__{k}__{id}__frame{N}.jpg``. Every record of the
user's train and val indices matches one of the two. Per-method results show which manipulations a
model misses, which one overall AUROC hides.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

# Optional, in the data folder: {"1": "a method's name", ...}. The repackaged set ships no list of its 15
# methods and none is published with it, so the report shows numbers unless the user supplies the names.
METHOD_NAMES_FILE = "method_names.json"
REAL_GROUP = "real"
OTHER_GROUP = "other"
METHOD_IDS = tuple(range(1, 16))

_FAKE_RE = re.compile(r"^(\d+)__[0-9a-z]+__[0-9a-z]+__frame\d+\.[a-z]+$", re.IGNORECASE)
_REAL_RE = re.compile(r"^image__\d+__[0-9a-z]+__frame\d+\.[a-z]+$", re.IGNORECASE)


def manipulation_method(image_path: str) -> str:
    """``"1"`` .. ``"15"`` for a fake's method, ``"real"`` for a real frame, ``"other"`` otherwise.

    Only the file name counts (folders are ignored), so the same frame groups the same way in every
    split. A name of the fake shape whose number is outside 1..15 (or written with a leading zero)
    is ``"other"`` rather than a new method: it is not ForgeryNet's naming, and guessing would
    split one method into two rows. The label is not consulted; callers compare both when needed.
    """
    name = os.path.basename(image_path)
    if _REAL_RE.match(name):
        return REAL_GROUP
    match = _FAKE_RE.match(name)
    if match is None:
        return OTHER_GROUP
    number = match.group(1)
    if number.startswith("0") or int(number) not in METHOD_IDS:
        return OTHER_GROUP
    return number


def group_order(group: str) -> tuple[int, int]:
    """Sort key: methods by number, then ``real``, then ``other``."""
    if group.isdigit():
        return 0, int(group)
    return (1, 0) if group == REAL_GROUP else (2, 0)


def read_method_names(data_root: str | os.PathLike | None) -> tuple[dict[str, str], str | None]:
    """The names in ``<data_root>/method_names.json`` (method number as text -> name) and a note: where
    the names came from, or why the file was left out (the report says so; an evaluation that finished
    is never stopped by it). No file: no names, no note."""
    if data_root is None:
        return {}, None
    path = Path(data_root) / METHOD_NAMES_FILE
    if not path.is_file():
        return {}, None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return {}, f"{path} left out: not readable JSON ({err})"
    wanted = {str(i) for i in METHOD_IDS}
    if (not isinstance(names, dict) or not set(names) <= wanted
            or not all(isinstance(v, str) and v.strip() for v in names.values())):
        return {}, (f"{path} left out: it must be one JSON object mapping method numbers 1..15 (as text) to "
                    f'names, e.g. {{"1": "name of method 1"}}')
    return {k: v.strip() for k, v in names.items()}, f"method names from {path}"

