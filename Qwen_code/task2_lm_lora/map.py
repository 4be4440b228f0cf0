"""Task 2 preprocessing: annotation index -> training set for LORA.py (JSON Lines).

Each record holds the image path (relative to data_root), label, the chat messages (image, prompt;
answer "Fake"/"Real") and the image's size and SHA-256; no pixels (see ``qwen_forensics.data.lm_records``
for the format and its disk cost). Work is done in batches under ``batch_output_dir``; rerunning
after an interruption skips the finished batches, then everything is merged into
``final_dataset_path``. The earlier map.py's shape, a ``datasets`` list (e.g. train and test) with
a ``prompt_template`` ending in ``{label_text}``, converts every listed index the same way.

    python Qwen_code/task2_lm_lora/map.py --config Qwen_code/task2_lm_lora/config_map.json [--root DIR]
"""

from __future__ import annotations

from pathlib import Path

from qwen_forensics.config import load_config
from qwen_forensics.task_configs import Task2MapConfig


def main(argv: list[str] | None = None) -> None:
    cfg = load_config(Task2MapConfig, description=__doc__, argv=argv,
                      default_config=Path(__file__).with_name("config_map.json"))
    # Imported here, after the config is read: --help and config errors need no torch.
    from qwen_forensics.checkpoints import write_resolved_config
    from qwen_forensics.data import run_map
    from qwen_forensics.model import load_processor
    for job in cfg.jobs():
        print(f"map {job.name}: {job.annotation_file} -> {job.final_dataset_path}\n  prompt: {job.prompt_text!r}; "
              f"answers: fake {job.fake_word!r}, real {job.real_word!r}")
    # The model's processor checks the answer words before any record is mapped.
    for result in run_map(cfg, load_processor(cfg.base_model_path)):
        write_resolved_config(Path(result.batch_dir), cfg)
        done = result.batches_total - len(result.batches_written)
        print(f"map {result.name}: {result.records} records ({result.skipped} skipped) in {result.batches_total} "
              f"batches: {len(result.batches_written)} written now, {done} already finished")
        print(f"  training set: {result.final_path} ({result.final_bytes} bytes, {result.bytes_per_record:.0f} "
              f"bytes/record; batch files {result.batch_bytes} bytes in {result.batch_dir})")


if __name__ == "__main__":
    main()
