"""End-to-end speed of the pipeline scripts themselves, run as a user runs them, at the 7B shape.

    python Qwen_code/benchmark_e2e.py --workdir /tmp/e2e --out e2e.json [--train-images 1024 --test-images 256]

Builds a user root in ``--workdir``: a randomly initialised Qwen2.5-VL-7B-shaped model saved in the
Hugging Face format (config, safetensors shards, the tiny folder's tokenizer and processor, whose
token ids the config reuses) as ``Qwen2.5-VL-7B-Instruct/``, and a synthetic JPEG data set at the
user's frame sizes (the mix of the user's real index: 720x1280 most, then 1080x1920, 360x480,
360x640, 480x854) with its masks. Then every script runs in its own process with the shipped
config and ``--root``, one epoch, exactly as ``python Qwen_code/...py --root DIR`` would run it:

    Task 1 lora_train.py, lora_eval.py, full_model_eval.py, predict.py on the test images; Task 2 map.py,
    LORA.py, lora_infer.py; Task 3 hybrid_train.py, hybrid_eval.py

and, when named with ``--scripts``, the user's own training configs (``seed_*``: tests/data/seed_configs,
relocated, the link to map.py's output connected), the memory variants for smaller cards
(``mem_*``: :data:`MEMORY_VARIANTS`) and the robustness study (``robust_task1_head_eval``: lora_eval.py with
``--perturb field``, the 21 conditions of IMDLBenCo's grid plus the clean pass on the test images, the model
loaded once; run it with ``task1_head_eval`` and ``--test-images 1000``: the result gains
``robustness_vs_one_evaluation``, the study's time over the plain evaluation's, whole process and inference
loops, against the issue's bound of 23).

Each script prints ``[speed]`` lines: images, seconds, images/s and (on a GPU) peak GPU memory of its training
loop (data loading included), or of its evaluation: the inference loop and the whole run from the
first batch to the last file written. This harness collects them with each process's wall time (model
loading and start-up included) into ``--out``.

Scale-out (README "Multi-GPU"): ``--num-processes 1 2 4 8`` runs every training and evaluation step once per
count N under ``accelerate launch --multi_gpu --num_processes N`` (N = 1: plain ``python``; ``map.py`` and
``predict.py`` run once, in one process) and prints, per step and N, the images/s of all processes together
and the scaling efficiency = images/s at N / (N x images/s at 1): of the training loop for the trainings,
of the whole run (first batch to last file written, the ordered gather and rank 0's outputs included) and
of the inference loop for the evaluations. The rows go into ``--out`` under ``scaling``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.shapes import seven_b_config
from qwen_forensics.demo.tiny import OUTPUT_FILES, build_tiny_model
from qwen_forensics.model.loader import TINY_MODEL_MARKER

CODE = Path(__file__).resolve().parent
# The user's frame sizes, in about the proportions of their real index (cycled per video).
USER_SIZES = [(720, 1280)] * 4 + [(1080, 1920), (360, 480), (360, 640), (480, 854)]
SPEED = re.compile(r"\[speed\] (?P<what>.+?): (?P<images>\d+) images in (?P<seconds>[0-9.]+) s = "
                   r"(?P<rate>[0-9.]+) images/s(?:, peak GPU memory (?P<peak>[0-9.]+) GiB)?"
                   r"(?:, (?P<waited>[0-9.]+) s of it waiting for data)?")
# An evaluation's (and predict.py's) one line: its inference loops and its whole run.
EVAL_SPEED = re.compile(r"\[speed\] evaluation: (?P<images>\d+) images; inference (?P<seconds>[0-9.]+) s = "
                        r"(?P<rate>[0-9.]+) images/s(?:, (?P<waited>[0-9.]+) s of it waiting for data)?; whole run "
                        r"(?P<whole_seconds>[0-9.]+) s = (?P<whole_rate>[0-9.]+) images/s "
                        r"\(first batch to last file written\)(?:; peak GPU memory (?P<peak>[0-9.]+) GiB)?")
# Memory variants (README): name, script, --set overrides of its shipped config.
MEMORY_VARIANTS = [
    ("task2_bs8x2", "task2_lm_lora/LORA.py", ["training_args.per_device_train_batch_size=8",
                                              "training_args.gradient_accumulation_steps=2"]),
    ("task2_bs2x8", "task2_lm_lora/LORA.py", ["training_args.per_device_train_batch_size=2",
                                              "training_args.gradient_accumulation_steps=8"]),
    ("task2_bs4x4_ckpt", "task2_lm_lora/LORA.py", ["training_args.per_device_train_batch_size=4",
                                                   "training_args.gradient_accumulation_steps=4",
                                                   "training_args.gradient_checkpointing=true"]),
    ("task3_bs8x2", "task3_hybrid_lora/hybrid_train.py", ["batch_size=8", "grad_accum=2"]),
    ("task3_bs8x2_ckpt", "task3_hybrid_lora/hybrid_train.py", ["batch_size=8", "grad_accum=2",
                                                               "gradient_checkpointing=true"]),
    ("task3_bs4x4_ckpt", "task3_hybrid_lora/hybrid_train.py", ["batch_size=4", "grad_accum=4",
                                                               "gradient_checkpointing=true"]),
    ("task1_bs16_recompute0", "task1_modular_lora/lora_train.py", ["recompute_blocks=0", "epochs=1"]),
]
# Steps that always run in one process: map.py prepares data, predict.py is not distributed.
SINGLE_PROCESS_STEPS = ("task2_map", "predict")
# What the 7B folder takes from the tiny one: everything but the weights, the model config and the tiny marker.
NOT_COPIED = ("config.json", "generation_config.json", TINY_MODEL_MARKER)


def build_model_folder(folder: Path, tiny: Path) -> None:
    """A random 7B-shaped model in the on-disk format of the released checkpoint."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(seven_b_config(tiny), dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    for name in OUTPUT_FILES:
        if (tiny / name).is_file() and name not in NOT_COPIED and not name.startswith("model"):
            shutil.copy(tiny / name, folder / name)
    del model
    torch.cuda.empty_cache()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(script: Path, processes: int) -> list[str]:
    """How a script starts on ``processes`` GPUs of this host: ``python SCRIPT`` for one, else the README's
    ``accelerate launch --multi_gpu --num_processes N SCRIPT`` (the scripts do their own autocast)."""
    if processes == 1:
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), str(script)]


def run_script(name: str, script: str, root: Path, sets: list[str], logs: Path, argv: list[str] | None = None,
               processes: int = 1) -> dict:
    """One script in its own process(es): with ``--root`` and ``--set`` overrides (a config script), or with
    ``argv`` as given (predict.py); on ``processes`` GPUs (:func:`launch_command`)."""
    command = launch_command(CODE / script, processes)
    if argv is not None:
        command += argv
    else:
        command += ["--root", str(root)]
        for value in sets:
            command += ["--set", value]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    (logs / f"{name}.log").write_text(log)
    lines = [m.groupdict() for m in SPEED.finditer(log)]
    lines += [{**m.groupdict(), "what": "evaluation (inference)"} for m in EVAL_SPEED.finditer(log)]
    row = {"wall_s": wall, "returncode": done.returncode, "processes": processes,
           "speed": [{"what": m["what"], "images": int(m["images"]), "seconds": float(m["seconds"]),
                      "images_per_s": float(m["rate"]), "peak_gib": float(m["peak"] or 0),
                      "data_wait_s": float(m["waited"]) if m["waited"] else None,
                      **({"whole_run_s": float(m["whole_seconds"]), "whole_run_images_per_s": float(m["whole_rate"])}
                         if m.get("whole_rate") else {})} for m in lines]}
    summary = ", ".join(f"{s['what']}: {s['images_per_s']:.1f} img/s, {s['peak_gib']:.1f} GiB"
                        + (f", data wait {s['data_wait_s']:.1f} s" if s["data_wait_s"] is not None else "")
                        + (f", whole run {s['whole_run_images_per_s']:.1f} img/s" if "whole_run_s" in s else "")
                        for s in row["speed"])
    print(f"{name:>16}: rc {done.returncode}, {wall:6.1f} s wall; {summary}", flush=True)
    if done.returncode:
        print(log[-3000:], flush=True)
    return row


def scaling_rows(runs: dict[str, dict[int, dict]]) -> list[dict]:
    """Per step and process count, from :func:`run_script` rows (``runs[step][N]``): the images/s of all
    processes together and the scaling efficiency = images/s at N / (N x images/s at 1) (None without a
    one-process run or a [speed] line). Trainings: their last training-loop line; evaluations: the whole run
    (``images_per_s``) and the inference loop (``inference_images_per_s``)."""
    def rates(row: dict) -> dict[str, float | None]:
        speed = row["speed"]
        evaluation = next((s for s in speed if "whole_run_images_per_s" in s), None)
        if evaluation is not None:
            return {"images_per_s": evaluation["whole_run_images_per_s"],
                    "inference_images_per_s": evaluation["images_per_s"]}
        return {"images_per_s": speed[-1]["images_per_s"] if speed and not row["returncode"] else None}

    out = []
    for step, by_count in runs.items():
        base = rates(by_count[1]) if 1 in by_count else {}
        for count in sorted(by_count):
            got = rates(by_count[count])
            row = {"step": step, "processes": count}
            for key, value in got.items():
                one = base.get(key)
                row[key] = value
                row[key.replace("images_per_s", "efficiency")] = (value / (count * one) if value and one else None)
            out.append(row)
    return out


def format_scaling(rows: list[dict]) -> str:
    """The scaling rows as the README's table (Markdown)."""
    lines = ["| step | processes | img/s | efficiency | inference img/s | inference efficiency |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(value, percent: bool = False) -> str:
        if value is None:
            return ""
        return f"{100 * value:.1f}%" if percent else f"{value:.1f}"

    for row in rows:
        lines.append(f"| {row['step']} | {row['processes']} | {cell(row['images_per_s'])} | "
                     f"{cell(row['efficiency'], True)} | {cell(row.get('inference_images_per_s'))} | "
                     f"{cell(row.get('inference_efficiency'), True)} |")
    return "\n".join(lines)


def robustness_ratio(scripts: dict) -> dict | None:
    """The robustness study's time over the plain evaluation's on the same images, when both ran: whole
    processes (model loading included, once in each) and the inference loops."""
    study, plain = scripts.get("robust_task1_head_eval"), scripts.get("task1_head_eval")
    if not study or not plain or study["returncode"] or plain["returncode"]:
        return None
    loops = [sum(s["seconds"] for s in run["speed"]) for run in (study, plain)]
    return {"wall": study["wall_s"] / plain["wall_s"], "inference": loops[0] / loops[1] if loops[1] else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-images", type=int, default=1024, help="images in train_idx.json")
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--data-workers", type=int, default=16, help="processes that render the data set")
    parser.add_argument("--scripts", nargs="+", default=None,
                        help="run only these steps (names as in the output, e.g. task1_train task1_head_eval)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="cut every training to this many optimizer steps (default: one epoch)")
    parser.add_argument("--num-processes", type=int, nargs="+", default=None, metavar="N",
                        help="run each training and evaluation step on N GPUs (accelerate launch) for every N "
                             "given, which must include 1, and print the scaling efficiency per step")
    args = parser.parse_args(argv)
    counts = args.num_processes
    if counts is not None and (1 not in counts or min(counts) < 1 or len(set(counts)) != len(counts)):
        parser.error(f"--num-processes {' '.join(map(str, counts))}: give distinct counts >= 1, including 1 (the "
                     "baseline of the efficiency)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmark_e2e.py needs a CUDA device")
    if args.num_processes and max(args.num_processes) > torch.cuda.device_count():
        raise SystemExit(f"--num-processes {max(args.num_processes)}: this host has {torch.cuda.device_count()} GPUs")
    # Absolute: the steps pass paths under it to scripts that resolve a relative path against their config file.
    workdir = Path(args.workdir).resolve()
    root, logs = workdir / "root", workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(workdir / "tiny") if not (workdir / "tiny" / "config.json").is_file() else workdir / "tiny"
    timings = {}
    start = time.perf_counter()
    model_dir = root / "Qwen2.5-VL-7B-Instruct"
    if not (model_dir / "config.json").is_file():
        build_model_folder(model_dir, tiny)
    timings["model_folder_s"] = time.perf_counter() - start
    start = time.perf_counter()
    # 80% of trainingset2 goes to train_idx.json (the rest to val_idx.json, which Task 1 validates on).
    # The set is a pure function of these arguments, so a second call with the same ones reuses it.
    data_args = {"n_train": args.train_images * 5 // 4, "n_test": args.test_images, "sizes": USER_SIZES,
                 "frames_per_video": 4}
    made = workdir / "data_summary.json"
    previous = json.loads(made.read_text()) if made.is_file() else {}
    if previous.get("arguments") == json.loads(json.dumps(data_args)):
        summary = previous["summary"]
    else:
        summary = make_demo_dataset(root, **data_args, overwrite=True, workers=args.data_workers)
        made.write_text(json.dumps({"arguments": data_args, "summary": summary}) + "\n")
    timings["data_s"] = time.perf_counter() - start
    print(f"model folder {timings['model_folder_s']:.0f} s, data {timings['data_s']:.0f} s: {summary}", flush=True)

    cut = [f"max_steps={args.train_steps}"] if args.train_steps else []
    cut_trainer = [f"training_args.max_steps={args.train_steps}"] if args.train_steps else []
    t2_set = f"train_dataset_path={root / 'task2_lm_lora/datasets/train.jsonl'}"
    # The user's own configs (tests/data/seed_configs), relocated, their broken links connected, for memory.
    seed = CODE.parent / "tests" / "data" / "seed_configs"
    steps = [
        ("task1_train", "task1_modular_lora/lora_train.py", ["epochs=1", *cut]),
        ("task1_head_eval", "task1_modular_lora/subtask_vit_head_eval/lora_eval.py", []),
        ("task1_full_eval", "task1_modular_lora/subtask_full_model_eval/full_model_eval.py", []),
        ("predict", "predict.py", None),
        ("task2_map", "task2_lm_lora/map.py", []),
        ("task2_train", "task2_lm_lora/LORA.py", ["training_args.num_train_epochs=1", *cut_trainer]),
        ("task2_infer", "task2_lm_lora/lora_infer.py", []),
        ("task3_train", "task3_hybrid_lora/hybrid_train.py", ["epochs=1", *cut]),
        ("task3_eval", "task3_hybrid_lora/hybrid_eval.py", []),
        ("robust_task1_head_eval", "task1_modular_lora/subtask_vit_head_eval/lora_eval.py",
         ["--perturb", "field", f"out_dir={root / 'task1_modular_lora/robustness_eval'}"]),
        ("seed_task1_train", "task1_modular_lora/lora_train.py",
         [f"--config={seed / 'task1_config_lora.json'}", "epochs=1", *cut]),
        ("seed_task2_train", "task2_lm_lora/LORA.py",
         [f"--config={seed / 'task2_config_lora_trainer.json'}", t2_set, *cut_trainer]),
        ("seed_task3_train", "task3_hybrid_lora/hybrid_train.py",
         [f"--config={seed / 'task3_config_hybrid_train.json'}", "epochs=1", *cut]),
    ]
    # Settings for smaller cards (README memory table), each a training with the shipped config plus these keys.
    steps += [(f"mem_{name}", script, [*sets, *(cut if "LORA" not in script else cut_trainer)])
              for name, script, sets in MEMORY_VARIANTS]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "transformers": __import__("transformers").__version__, "data": summary, **timings, "scripts": {}}
    known = [name for name, _, _ in steps]
    unknown = sorted(set(args.scripts or []) - set(known))
    if unknown:
        raise SystemExit(f"--scripts: unknown {unknown}; the steps are {known}")
    predict_argv = ["--ckpt", str(root / "task1_modular_lora/training/final"), str(root / "data/testset2/image"),
                    "--out", str(workdir / "predict_out"), "--batch-size", "32", "--num-workers", "8"]
    counts = args.num_processes or [1]
    scaled: dict[str, dict[int, dict]] = {}
    for name, script, sets in steps:
        if args.scripts and name not in args.scripts or not args.scripts and name.startswith(("seed_", "mem_",
                                                                                              "robust_")):
            continue
        config = [s.removeprefix("--config=") for s in sets or [] if s.startswith("--config=")]
        flags = sets[:2] if sets and sets[0] == "--perturb" else []
        sets = [s for s in sets or [] if not s.startswith("--config=") and s not in flags]
        argv = predict_argv if script == "predict.py" else None
        if config:
            argv = ["--root", str(root), "--config", config[0], *[a for s in sets for a in ("--set", s)]]
        if flags:
            argv = ["--root", str(root), *flags, *[a for s in sets for a in ("--set", s)]]
        for count in [1] if name in SINGLE_PROCESS_STEPS else counts:
            label = name if args.num_processes is None else f"{name}_x{count}"
            results["scripts"][label] = run_script(label, script, root, sets, logs, argv, processes=count)
            if args.num_processes is not None and name not in SINGLE_PROCESS_STEPS:
                scaled.setdefault(name, {})[count] = results["scripts"][label]
                results["scaling"] = scaling_rows(scaled)
            ratio = robustness_ratio(results["scripts"])
            if ratio:
                results["robustness_vs_one_evaluation"] = ratio
                print(f"robustness (22 conditions) / one evaluation: {ratio['wall']:.2f} x wall, "
                      f"{ratio['inference']:.2f} x inference (bound: 23 x)", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if scaled:
        print(format_scaling(results["scaling"]), flush=True)


if __name__ == "__main__":
    main()
