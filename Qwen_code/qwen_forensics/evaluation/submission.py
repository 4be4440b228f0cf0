"""Challenge submission files, in the layout of the IJCAI 2025 Deepfake Detection and Localization challenge
(``--export-submission DIR`` of ``lora_eval.py``, ``hybrid_eval.py`` and ``benchmark_sets.py``):

- ``DIR/prediction.txt``: one line ``{image file name},{p_fake:.4f}`` per image, in index order;
- ``DIR/mask/{image stem}.png``: the predicted mask, one 8-bit channel, 0 or 255, at the image's original
  size: a pixel is 255 when its probability is at or above the pixel threshold (the CSV's ``pixel_f1`` /
  ``pixel_iou`` convention), written only for checkpoints with heatmaps;
- ``DIR/submission.zip``: the two above, as the organisers take them.

The masks are made on the accelerator as each batch leaves the model (the inverse letterbox of the batch's
images of one size at once, the threshold) and encoded on background threads, like the report's pictures.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from qwen_forensics.data.collate import SIZE_KEY
from qwen_forensics.data.geometry import letterbox_geometry, original_size_heatmap, unletterbox_stack
from qwen_forensics.data.records import BadIndex, Record
from qwen_forensics.files import BackgroundWriter, atomic_write, atomic_write_text
from qwen_forensics.report.pictures import save_binary_mask

PREDICTION_FILE = "prediction.txt"
MASK_DIR = "mask"
ZIP_FILE = "submission.zip"


class SubmissionWriter:
    """The submission of one evaluated record list into ``out_dir``. With ``image_size`` (checkpoints with
    heatmaps) :meth:`on_batch` is the prediction loop's hook that writes each batch's masks; :meth:`finish`
    writes the masks no batch brought, ``prediction.txt`` and the zip. Under several processes every
    process has one (so an index it refuses stops all of them before the model loads) and writes the masks
    ``writes(position)`` gives it (``SplitEvaluator.writes``) while the loop runs; the main process's
    :meth:`finish` writes none of the others', which are on disk once every process has waited for its
    writer (``SplitEvaluator.close``). Two records whose file names or stems coincide would overwrite each
    other's line or mask: that stops the run before the model loads (``data.BadIndex`` naming them)."""

    def __init__(self, records: Sequence[Record], data_root: str | os.PathLike, out_dir: str | os.PathLike,
                 image_size: int | None, threshold: float, writes: Callable[[int], bool] | None = None):
        names = [Path(r.image_path).name for r in records]
        stems = [Path(name).stem for name in names]
        clashes = sorted(k for k, n in Counter(stems).items() if n > 1)
        if clashes:
            raise BadIndex(f"--export-submission: {len(clashes)} file stems occur more than once among the "
                             f"evaluated images (e.g. {clashes[:3]}); prediction.txt and mask/ name images by file "
                             "name, so each must be unique in the set; rename the files or export without them")
        self.records, self.data_root, self.names, self.stems = list(records), Path(data_root), names, stems
        self.folder, self.image_size, self.threshold = Path(out_dir), image_size, threshold
        self.writer = BackgroundWriter()
        self.written: set[int] = set()
        self.writes = writes

    def mask_path(self, i: int) -> Path:
        return self.folder / MASK_DIR / f"{self.stems[i]}.png"

    def on_batch(self, batch: Mapping, heatmaps: torch.Tensor) -> None:
        positions, sizes = batch["position"].tolist(), batch[SIZE_KEY].tolist()
        groups: dict[tuple[int, int], list[int]] = {}
        for k, size in enumerate(sizes):
            groups.setdefault(tuple(size), []).append(k)
        for (h, w), members in groups.items():
            prob = unletterbox_stack(heatmaps[members].float(), letterbox_geometry(h, w, self.image_size))
            masks = (prob >= self.threshold).cpu().numpy()
            for mask, k in zip(masks, members):
                self._submit(positions[k], mask)

    def _submit(self, i: int, mask: np.ndarray) -> None:
        if i not in self.written and (self.writes is None or self.writes(i)):
            self.written.add(i)
            self.writer.submit(save_binary_mask, mask, self.mask_path(i))

    def finish(self, p_fake: np.ndarray, heatmaps: np.ndarray | None = None) -> Path:
        """Write what is left (``heatmaps``: every record's patch-grid map, gathered, for masks no batch of
        this process brought) and the zip; returns the zip's path."""
        if self.image_size is not None:
            for i in sorted(i for i in set(range(len(self.records))) - self.written
                            if self.writes is None or self.writes(i)):
                with Image.open(self.data_root / self.records[i].image_path) as img:
                    shape = (img.height, img.width)
                self._submit(i, original_size_heatmap(heatmaps[i], shape, self.image_size) >= self.threshold)
        self.writer.close()
        lines = [f"{name},{float(p):.4f}\n" for name, p in zip(self.names, p_fake)]
        prediction = atomic_write_text(self.folder / PREDICTION_FILE, "".join(lines))
        masks = [self.mask_path(i) for i in range(len(self.records))] if self.image_size is not None else []

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.write(prediction, PREDICTION_FILE)
                for path in masks:
                    archive.write(path, f"{MASK_DIR}/{path.name}")

        return atomic_write(self.folder / ZIP_FILE, write)

