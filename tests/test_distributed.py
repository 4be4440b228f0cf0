"""Several processes on the CPU (gloo, real DDP through ``accelerate launch``) against one process.

Evaluation: every evaluation script run as 2 (and once 3) processes on an index whose record count no
process count divides writes the one-process predictions file row for row, in index order, and the same
metrics CSV row, while the processes together loaded every record (the sampler's repeats dropped).
Training: a 2-process run resumed from its first epoch checkpoint ends where the uninterrupted 2-process
run ends (log rows and final weights).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

from conftest import TINY_IMAGE_SIZE
from qwen_forensics.evaluation import SplitEvaluator
from scripts import check_shards, csv_rows, demo_index, launch, run_script, sets

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

NUM_TEST, NUM_VAL = 11, 5  # divisible by none of the process counts, so the last round is padded
BATCH = 2
# CSV columns that describe the run, not what it computed.
RUN_COLUMNS = {"timestamp", "images_per_s", "peak_gib", "run_id", "config_hash"}


@pytest.fixture(scope="module")
def indexes(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """The first 11 test records and the first 5 validation records (both labels in each); ``broken``: the
    11 test records with two bad ones among them, a missing image and a real image whose "HxW" is not its
    size (found only by reading the file)."""
    folder = tmp_path_factory.mktemp("dist_indexes")
    out = {}
    for name, count in (("test", NUM_TEST), ("val", NUM_VAL)):
        records = json.loads(demo_index(tiny_root, name).read_text())[:count]
        assert {r["label"] for r in records} == {0, 1}
        out[name] = folder / f"{name}.json"
        out[name].write_text(json.dumps(records))
    test = json.loads(out["test"].read_text())
    real = next(r for r in json.loads(demo_index(tiny_root, "train").read_text()) if r["label"] == 0)
    broken = [*test[:3], {"image_path": "testset2/image/gone.jpg", "mask_path": "720x1280", "label": 0}, *test[3:8],
              {**real, "mask_path": "100x100"}, *test[8:]]
    out["broken"] = folder / "broken.json"
    out["broken"].write_text(json.dumps(broken))
    return out


@pytest.mark.parametrize("records, batch, processes", [(11, 2, 2), (11, 3, 3), (7, 4, 4), (30, 4, 3), (5, 8, 2)])
def test_each_record_is_written_by_one_process_that_scored_it(records, batch, processes):
    """``SplitEvaluator.writes``: of the records in each process's shard (accelerate's sampler, repeats
    included), every record is written by exactly one process."""
    writers = {}
    for rank in range(processes):
        evaluator = SplitEvaluator(SimpleNamespace(num_processes=processes, process_index=rank), "", "fail", Path(),
                                   batch, 0, dataset=list, collate=list)
        shard = BatchSamplerShard(BatchSampler(SequentialSampler(range(records)), batch, drop_last=False), processes,
                                  rank)
        for position in {p for b in shard for p in b}:
            if evaluator.writes(position):
                writers.setdefault(position, []).append(rank)
    assert sorted(writers) == list(range(records)) and all(len(ranks) == 1 for ranks in writers.values())


def _eval_sets(script: str, ckpts: dict[str, Path], indexes: dict[str, Path], out: Path,
               test_index: str = "test") -> list[str]:
    test, val = indexes[test_index], indexes["val"]
    common = [f"out_dir={out}", "num_workers=0", f"batch_size={BATCH}", "on_bad_sample=skip"]
    if test_index == "broken" and script in ("lora_eval", "hybrid_eval"):
        common.append("save_heatmaps=all")
    task3 = ckpts["task3"] / "final"
    return common + {
        "lora_eval": [f"ckpt_path={ckpts['task1']}", f"ann_test={test}", f"ann_val={val}", "num_heatmaps=3",
                      "export_submission=submission"],
        "full_model_eval": [f"lora_checkpoint={ckpts['task1']}", f"annotation_file={test}",
                            f"val_annotation_file={val}", "max_new_tokens=2"],
        "lora_infer": [f"lora_path={ckpts['task2']}", f"annotation_file={test}", f"val_annotation_file={val}",
                       "max_new_tokens=2"],
        "hybrid_eval": [f"lora_checkpoint={task3 / 'adapter'}", f"head_checkpoint={task3 / 'heads.safetensors'}",
                        f"fusion_checkpoint={task3 / 'fusion.safetensors'}", f"annotation_file={test}",
                        f"val_annotation_file={val}", "num_heatmaps=3"],
    }[script]


@pytest.fixture(scope="module")
def ckpts(task1_ckpt, task2_adapter, task3_run) -> dict[str, Path]:
    return {"task1": task1_ckpt, "task2": task2_adapter, "task3": task3_run}


def _same_value(a, b, what: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, abs=1e-5, nan_ok=True), what
    else:
        assert b == a, what


def _same_csv_row(one: dict, many: dict) -> None:
    assert one.keys() == many.keys()
    for key in one.keys() - RUN_COLUMNS:
        try:
            a, b = float(one[key]), float(many[key])
        except ValueError:
            assert many[key] == one[key], key
            continue
        assert math.isnan(a) == math.isnan(b) and (math.isnan(a) or b == pytest.approx(a, abs=1e-5)), key


def _same_outputs(one: Path, many: Path) -> None:
    """The N-process run wrote what the 1-process run wrote: predictions row for row, the CSV row, the
    heatmap pictures and submission files."""
    first, second = (json.loads((run / "predictions.json").read_text()) for run in (one, many))
    assert len(second) == NUM_TEST
    assert [r["image_path"] for r in second] == [r["image_path"] for r in first]
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            _same_value(a[key], b[key], f"{a['image_path']}: {key}")
    _same_csv_row(csv_rows(one / "metrics.csv")[-1], csv_rows(many / "metrics.csv")[-1])
    assert sorted(p.name for p in (many / "heatmaps").glob("*.png")) == sorted(
        p.name for p in (one / "heatmaps").glob("*.png"))
    skipped = [json.loads((run / "skipped_test" / "skipped_records.json").read_text()) for run in (one, many)]
    assert skipped[1] == skipped[0]
    if (one / "submission").is_dir():
        lines = [(run / "submission" / "prediction.txt").read_text() for run in (one, many)]
        assert lines[1] == lines[0]
        assert sorted(p.name for p in (many / "submission" / "mask").iterdir()) == sorted(
            p.name for p in (one / "submission" / "mask").iterdir())


@pytest.mark.parametrize("script, processes, test_index", [
    ("lora_eval", 2, "test"), ("lora_eval", 3, "broken"), ("full_model_eval", 2, "test"), ("lora_infer", 2, "test"),
    ("hybrid_eval", 2, "test")])
def test_evaluation_on_several_processes_matches_one(script, processes, test_index, tiny_root, ckpts, indexes,
                                                     tmp_path):
    """``broken``: the processes share the validation of the index's files; they skip the same two records."""
    one, many = tmp_path / "one", tmp_path / "many"
    run_script(script, tiny_root, *_eval_sets(script, ckpts, indexes, one, test_index))
    args = ["--root", str(tiny_root), *sets(*_eval_sets(script, ckpts, indexes, many, test_index))]
    batches, _ = launch(processes, script, args, tmp_path / "positions")
    # Each process collated its validation batches, then its test batches.
    val_batches = math.ceil(NUM_VAL / (processes * BATCH))
    check_shards([b[:val_batches] for b in batches], NUM_VAL, BATCH)
    check_shards([b[val_batches:] for b in batches], NUM_TEST, BATCH)
    _same_outputs(one, many)
    skipped = json.loads((many / "skipped_test" / "skipped_records.json").read_text())
    assert skipped["num_skipped"] == (2 if test_index == "broken" else 0)


def test_benchmark_sets_on_two_processes_matches_one(tiny_root, ckpts, indexes, tmp_path):
    """benchmark_sets.py with the Task 1 checkpoint: the table, the predictions and the submission of 2
    processes are those of 1; one process opened the run (nothing was moved to previous_runs/)."""
    def argv(out: Path) -> list[str]:
        return ["--ckpt", str(ckpts["task1"]), "--set", f"ours={indexes['test']}", "--val", f"v={indexes['val']}",
                "--data-root", str(tiny_root / "data"), "--out", str(out), "--export-submission",
                str(out / "submission"), "--batch-size", str(BATCH), "--num-workers", "0"]

    one, many = tmp_path / "one", tmp_path / "many"
    run_script("benchmark_sets", None, argv=argv(one))
    batches, printed = launch(2, "benchmark_sets", argv(many), tmp_path / "positions")
    assert printed.count("[output] run ") == 1 and printed.count("benchmark table: ") == 1
    check_shards([b[math.ceil(NUM_VAL / (2 * BATCH)):] for b in batches], NUM_TEST, BATCH)
    assert not (many / "previous_runs").exists()
    _same_csv_row(csv_rows(one / "benchmark.csv")[0], csv_rows(many / "benchmark.csv")[0])
    first, second = (json.loads((run / "predictions_ours.json").read_text()) for run in (one, many))
    assert len(second) == NUM_TEST and [r["image_path"] for r in second] == [r["image_path"] for r in first]
    for a, b in zip(first, second):
        for key in a:
            _same_value(a[key], b[key], f"{a['image_path']}: {key}")
    submissions = [run / "submission" / "ours" for run in (one, many)]
    assert (submissions[1] / "prediction.txt").read_text() == (submissions[0] / "prediction.txt").read_text()
    assert sorted(p.name for p in (submissions[1] / "mask").iterdir()) == sorted(
        p.name for p in (submissions[0] / "mask").iterdir())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files under a checkpoint folder, keyed by file and name."""
    return {f"{path.relative_to(folder)}:{name}": tensor for path in sorted(folder.rglob("*.safetensors"))
            for name, tensor in load_file(path).items()}


def _same_weights(whole: Path, resumed: Path) -> None:
    a, b = _weights(whole), _weights(resumed)
    assert a and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def _same_log_rows(whole: list[dict], resumed: list[dict], columns: list[str]) -> None:
    assert len(resumed) == 1 and resumed[0]["epoch"] == whole[1]["epoch"] == "1"
    for key in columns:
        a, b = float(whole[1][key]), float(resumed[0][key])
        assert math.isnan(a) == math.isnan(b) and (math.isnan(a) or b == pytest.approx(a, abs=1e-6)), key


def _resume_from_first_epoch(script: str, tiny_root: Path, tmp_path: Path, out_key: str,
                             overrides) -> tuple[Path, Path]:
    """``script`` as 2 processes for 2 epochs of batch 4, and again resumed from the first run's ``epoch_0`` in
    a fresh folder (a run interrupted after its first checkpoint); both output folders. The uninterrupted
    run's first epoch covers every training record, padded to full batches."""
    def train(name: str, *extra: str) -> tuple[Path, list]:
        out = tmp_path / name
        args = ["--root", str(tiny_root),
                *sets(f"{out_key}={out}", "epochs=2", "batch_size=4", *overrides(out), *extra)]
        batches, _ = launch(2, script, args, tmp_path / f"positions_{name}")
        return out, batches

    (whole, batches), (resumed, _) = train("whole"), train("resumed", f"resume={tmp_path / 'whole' / 'epoch_0'}")
    num_train = len(json.loads(demo_index(tiny_root, "train").read_text()))
    steps = math.ceil(num_train / 8)
    check_shards([b[:steps] for b in batches], num_train, 4)
    assert int(csv_rows(whole / "log.csv")[0]["step"]) == steps
    return whole, resumed


def test_task1_training_resumed_on_two_processes_continues_the_run(tiny_root, indexes, tmp_path):
    def overrides(out: Path) -> list[str]:
        return [f"train_log={out / 'log.csv'}", f"final_trained_heads={out / 'final'}", "num_workers=0",
                f"image_size={TINY_IMAGE_SIZE}", "visual_layers=[1]", "lora_target_layers=[1]", "fuse_dim=32",
                f"ann_val={indexes['val']}"]

    whole, resumed = _resume_from_first_epoch("lora_train", tiny_root, tmp_path, "out_dir", overrides)
    _same_log_rows(csv_rows(whole / "log.csv"), csv_rows(resumed / "log.csv"),
                   ["step", "loss", "loss_cls", "loss_evi", "lr_head", "lr_lora", "val_auroc", "val_pixel_iou"])
    _same_weights(whole / "final", resumed / "final")


def test_task3_training_resumed_on_two_processes_continues_the_run(tiny_root, indexes, tmp_path):
    def overrides(out: Path) -> list[str]:
        return [f"train_log={out / 'log.csv'}", f"lora_checkpoint={out / 'final' / 'adapter'}",
                f"head_checkpoint={out / 'final' / 'heads.safetensors'}",
                f"fusion_checkpoint={out / 'final' / 'fusion.safetensors'}", "grad_accum=1", "num_workers=0",
                f"image_size={TINY_IMAGE_SIZE}", "visual_layers=[1]", "lora.visual.blocks=[1]", "fuse_dim=32",
                "gradient_checkpointing=false", f"ann_val={indexes['val']}"]

    whole, resumed = _resume_from_first_epoch("hybrid_train", tiny_root, tmp_path, "output_dir", overrides)
    _same_log_rows(csv_rows(whole / "log.csv"), csv_rows(resumed / "log.csv"),
                   ["step", "loss", "loss_lm", "loss_head", "val_lm_auroc", "val_head_auroc", "val_pixel_iou"])
    _same_weights(whole / "final", resumed / "final")


def test_task2_trainer_resumed_on_two_processes_continues_the_run(task2_adapter, tiny_root, tmp_path):
    """LORA.py (Hugging Face Trainer) on 2 processes, 4 steps with a checkpoint every 2; then from a copy
    of checkpoint-2 in a fresh folder: the same losses at steps 3 and 4 and the same adapter."""
    def train(name: str, *extra: str) -> Path:
        out = tmp_path / name
        launch(2, "LORA", ["--root", str(tiny_root), *sets(
            f"out_dir={out}", "save_lora_path=adapter", f"image_size={TINY_IMAGE_SIZE}", "lora_target_blocks=[1]",
            f"training_args.output_dir={out / 'hf'}", "training_args.max_steps=4", "training_args.save_steps=2",
            "training_args.save_strategy=\"steps\"", "training_args.per_device_train_batch_size=2",
            "training_args.gradient_accumulation_steps=1", "training_args.gradient_checkpointing=false",
            "training_args.logging_steps=1", "training_args.dataloader_num_workers=0", "training_args.bf16=false",
            "training_args.disable_tqdm=true", *extra)], tmp_path / f"positions_{name}")
        return out

    whole = train("whole")
    shutil.copytree(whole / "hf" / "checkpoint-2", tmp_path / "from" / "checkpoint-2")
    resumed = train("resumed", f"training_args.resume_from_checkpoint={tmp_path / 'from' / 'checkpoint-2'}")

    def losses(out: Path) -> dict[int, float]:
        state = json.loads((out / "hf" / "checkpoint-4" / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    first, second = losses(whole), losses(resumed)
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [1, 2, 3, 4]
    assert [second[s] for s in (3, 4)] == pytest.approx([first[s] for s in (3, 4)], abs=1e-6)
    _same_weights(whole / "adapter", resumed / "adapter")
