"""Test helper: run a pipeline script and record, per process, the dataset positions it loaded.

    python tests/record_positions.py OUT_DIR SCRIPT [SCRIPT ARGS ...]

Wraps the two batch collators so that every batch a process builds appends its ``position`` list to
``OUT_DIR/positions_<process index>.json`` as ``{"num_processes": N, "batches": [[...], ...]}``.
Under ``accelerate launch`` each process only collates the items its shard of the sampler gave
it, so the file shows exactly which records each process saw. Used by tests/test_task1_pipeline.py;
the pipeline code itself carries no such instrumentation.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from accelerate import PartialState

from qwen_forensics.data.collate import ImageBatchCollator, VisionLanguageCollator


def _recording(collate, out_dir: Path):
    def wrapped(self, items):
        batch = collate(self, items)
        state = PartialState()
        path = out_dir / f"positions_{state.process_index}.json"
        record = json.loads(path.read_text()) if path.exists() else {"num_processes": state.num_processes, "batches": []}
        record["batches"].append(batch["position"].tolist())
        path.write_text(json.dumps(record))
        return batch

    return wrapped


def main() -> None:
    out_dir, script = Path(sys.argv[1]), sys.argv[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    for cls in (ImageBatchCollator, VisionLanguageCollator):
        cls.__call__ = _recording(cls.__call__, out_dir)
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
