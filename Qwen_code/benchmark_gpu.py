"""GPU throughput and memory of each pipeline's hot step at the real Qwen2.5-VL-7B shape, random bf16 weights.

The model dimensions are the published 7B ones (SPEC 5); tokenizer, chat template and image
processor come from the tiny model folder, whose special-token ids the 7B-shaped config reuses, so
the inputs are built by the project's own collators exactly as in the scripts. Images are the
synthetic demo set, letterboxed to 448.

    python Qwen_code/benchmark_gpu.py --workdir /tmp/bench --out results.json [--sections task1 heads ...]
        [--profile]

Every section is measured, in the same process, three ways:

- ``fast``: what the scripts run (``window_attention.enable_fast_paths``: batched window attention,
  precomputed vision inputs, fused rotary / RMSNorm / SiLU kernels; Task 2 reads only the answer
  positions' logits);
- ``loop``: plain transformers (its per-window attention loop and eager ops), same step otherwise;
- ``seed``: the seed's way (the whole 8B model resident for Task 1, per-image ``generate`` for
  evaluation, full-vocabulary logits for LM training, the seed configs' batch sizes).

Reported per variant: images/s after warm-up (CUDA-synchronised wall time, the mean over the
timed steps), peak allocated GPU memory (``torch.cuda.max_memory_allocated``) and the fraction of
the arithmetic limit (FLOPs of one image's step, counted from the shapes, at 790 TFLOP/s bf16).
``--profile`` adds, for the ``fast`` variant, the GPU time per kernel class (matrix products,
attention, fused kernels, other elementwise, copies) and the share of wall time the GPU was busy.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import inject_adapter_in_model
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen_forensics.data import (ForgeryDataset, HybridCollator, ImageBatchCollator, VisionLanguageCollator,
                                 hybrid_inputs, generate_inputs, load_index, make_collator, model_inputs, vision_grid)
from qwen_forensics.data.collate import answer_only_inputs
from qwen_forensics.demo.dataset import make_demo_dataset
from qwen_forensics.demo.shapes import seven_b_config
from qwen_forensics.demo.tiny import build_tiny_model
from qwen_forensics.evaluation import answer_logits, eval_batch
from qwen_forensics.model import (ForensicHeads, ForensicViT, LoraInputCast, attach_lora, build_hybrid_model,
                                  load_processor, make_lora_config, trainable_to_fp32, vision_block_targets)
from qwen_forensics.model.fast import enable_fast_paths
from qwen_forensics.prompts import DEFAULT_PROMPT, PromptSetup, answer_token_ids
from qwen_forensics.task_configs import Task2TrainConfig, Task3TrainConfig
from qwen_forensics.training import (ForensicLossWeights, HybridLossWeights, autocast, enable_gradient_checkpointing,
                                     forensic_loss, hybrid_loss, hybrid_optimizer, peak_gib, recompute_frozen_blocks)

LAYERS = [7, 15, 23, 31]
DEVICE = torch.device("cuda")
PEAK_FLOPS = 790e12
VARIANTS = ("fast", "loop", "seed")


# ----------------------------------------------------------------------------------- FLOP counts
def vision_flops(cfg: Qwen2_5_VLConfig, tokens: int) -> float:
    """Forward FLOPs of the vision tower + merger for one image of ``tokens`` patches (448 px: 1024)."""
    v = cfg.vision_config
    c, inner = v.hidden_size, v.intermediate_size
    per_token = 2 * (4 * c * c + 3 * c * inner) * v.depth
    window = (v.window_size // v.patch_size) ** 2
    full = len(v.fullatt_block_indexes)
    attention = 4 * tokens * c * (full * tokens + (v.depth - full) * window)
    merger = 2 * (tokens // 4) * (4 * c * 4 * c + 4 * c * v.out_hidden_size)
    return per_token * tokens + attention + merger


def lm_flops(cfg: Qwen2_5_VLConfig, tokens: int) -> float:
    """Forward FLOPs of the decoder over ``tokens`` positions (no LM head)."""
    t = cfg.text_config
    h, kv = t.hidden_size, t.hidden_size // t.num_attention_heads * t.num_key_value_heads
    per_token = 2 * (2 * h * h + 2 * h * kv + 3 * h * t.intermediate_size) * t.num_hidden_layers
    return per_token * tokens + 4 * tokens * tokens * h * t.num_hidden_layers


# ----------------------------------------------------------------------------------- timing
def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


KERNEL_CLASSES = (("gemm", ("gemm", "cutlass", "sm90_xmma", "cublas", "matmul", "nvjet")),
                  ("attention", ("flash", "fmha", "attention", "efficient")),
                  ("fused (ours)", ("_rotary", "_rms", "_silu")),
                  ("copy / index", ("copy", "index", "gather", "scatter", "cat")),
                  ("elementwise / reduce", ("elementwise", "reduce", "vectorized", "unrolled")))


def profile(fn, steps: int = 2) -> dict:
    """GPU time per kernel class over ``steps`` calls of ``fn`` and the share of wall time the GPU was busy."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    by_class: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    syncs, sync_us, launches = 0, 0.0, 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            # Host side: each synchronising runtime call makes the host wait for the GPU to drain,
            # after which the GPU waits for the host to queue work again.
            if "Synchronize" in event.name or event.name == "cudaMemcpy":
                syncs += 1
                sync_us += event.cpu_time_total
            elif event.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
                launches += 1
            continue
        us = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        name = event.name.lower()
        kind = next((k for k, keys in KERNEL_CLASSES if any(key in name for key in keys)), "other")
        by_class[kind] += us
        top[event.name[:90]] += us
    gpu = sum(by_class.values()) / 1e6
    host_ops = sorted(((e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0),
                      key=lambda kv: -kv[1])[:15]
    return {"gpu_busy": gpu / wall, "wall_ms_per_call": 1e3 * wall / steps,
            "ms_per_call": {k: v / 1e3 / steps for k, v in sorted(by_class.items())},
            "top_kernels_ms": {k: round(v / 1e3 / steps, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]},
            "host_syncs_per_call": syncs / steps, "host_sync_ms_per_call": sync_us / 1e3 / steps,
            "kernel_launches_per_call": launches / steps,
            "top_host_ops_self_ms": {k[:60]: round(v / 1e3 / steps, 2) for k, v in host_ops}}


def measure(name: str, fn, images: int, flops_per_image: float, steps: int, results: dict, variant: str,
            do_profile: bool) -> None:
    torch.cuda.reset_peak_memory_stats()
    sec = timed(fn, steps, 2)
    row = {"images_per_s": images / sec, "s_per_step": sec, "peak_gib": peak_gib(),
           "batch": images, "flop_fraction": images / sec * flops_per_image / PEAK_FLOPS}
    if do_profile and variant == "fast":
        row["profile"] = profile(fn)
    results.setdefault(name, {})[variant] = row
    print(f"{name:>16} {variant:>5}: {row['images_per_s']:8.1f} img/s  {row['peak_gib']:6.1f} GiB  "
          f"{100 * row['flop_fraction']:5.1f}% of the FLOP limit", flush=True)


# ----------------------------------------------------------------------------------- inputs and models
def items(workdir: Path, n: int) -> list[dict]:
    records = load_index(workdir / "data" / "trainingset2" / "annotation.json")
    ds = ForgeryDataset(records, workdir / "data", 448)
    return [ds[i % len(ds)] for i in range(n)]


def to_device(batch: dict, fast: bool = True) -> dict:
    """The batch on the GPU; outside the fast variant without the collator's host-side mRoPE
    positions, so the model computes them itself as plain transformers does."""
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            if fast or k != "position_ids"}


def full_model(cfg: Qwen2_5_VLConfig, fast: bool):
    with DEVICE:
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    if fast:
        enable_fast_paths(model)
    return model


def vision_tower(cfg: Qwen2_5_VLConfig, fast: bool):
    with DEVICE:
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg.vision_config, dtype=torch.bfloat16)
    if fast:
        enable_fast_paths(tower)
    return tower


def forensic_model(cfg: Qwen2_5_VLConfig, variant: str, lora: bool):
    """Task 1's model: the tower (inside the resident full model for ``seed``), LoRA, heads."""
    if variant == "seed":
        holder = full_model(cfg, fast=False)
        visual = holder.model.visual
    else:
        holder, visual = None, vision_tower(cfg, fast=variant == "fast")
    visual.requires_grad_(False)
    if lora:
        inject_adapter_in_model(make_lora_config(vision_block_targets(visual, LAYERS), r=8, alpha=16, dropout=0.05),
                                visual)
    heads = ForensicHeads.from_vision_config(visual.config, LAYERS, 512).to(DEVICE)
    return ForensicViT(visual, LAYERS, heads), holder


def release() -> None:
    """Free the last variant's model before the next one is measured. The feature tap's hooks and
    the tower refer to each other, so only the cycle collector frees them: without it a variant
    started with the previous one still resident (2.7 GiB more at the Task 1 recompute row)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def train_step(model: nn.Module, batch: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               weights: HybridLossWeights, *, amp_dtype: str = "bf16", max_norm: float = 1.0,
               lora_cast=None) -> dict[str, torch.Tensor]:
    """One Task 3 optimiser step on a batch already on the device (``hybrid_train.py`` runs the same
    loss inside its accelerate loop)."""
    model.train()
    device = next(model.parameters()).device
    with autocast(device, amp_dtype, lora_cast):
        out = model(**hybrid_inputs(batch), logits_to_keep=batch["logits_to_keep"])
    terms = hybrid_loss(out, batch, weights)
    terms["total"].backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in terms.items()}


# ----------------------------------------------------------------------------------- sections
def bench_task1(cfg, processor, workdir, args, results) -> None:
    """One Task 1 training step (LoRA on 4 ViT blocks + heads), batch 16 (the seed config's 4 for seed)."""
    flops = 3 * vision_flops(cfg, 1024)
    def run(variant: str, recompute: int = 0) -> None:
        batch = 4 if variant == "seed" else 16
        model, holder = forensic_model(cfg, variant, lora=True)
        if recompute:
            recompute_frozen_blocks(model.visual, recompute, LAYERS, max(LAYERS))
        model.train()
        lora = trainable_to_fp32(model.visual)
        opt = torch.optim.AdamW([{"params": lora, "lr": 1e-4}, {"params": model.heads.parameters(), "lr": 1e-3}])
        b = to_device(ImageBatchCollator(processor)(items(workdir, batch)))
        weights = ForensicLossWeights()
        lora_cast = LoraInputCast(model.visual) if variant == "fast" else None

        def step(phases: dict | None = None):
            with autocast(DEVICE, "bf16", lora_cast):
                out = model(b["pixel_values"], vision_grid(b))
            loss = forensic_loss(out["cls_logit"].float(), out["heatmap_logit"].float(), b["mask"], b["labels"],
                                 weights)
            if phases is not None:
                phases["kept_after_forward"] = torch.cuda.memory_allocated() / 2**30
                phases["peak_forward"] = peak_gib()
                torch.cuda.reset_peak_memory_stats()
            loss["total"].backward()
            if phases is not None:
                phases["peak_backward"] = peak_gib()
            torch.nn.utils.clip_grad_norm_(list(lora) + list(model.heads.parameters()), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        name = f"task1_train_recompute{recompute}" if recompute else "task1_train"
        measure(name, step, batch, flops, args.steps, results, variant, args.profile and not recompute)
        # Where the peak sits: what the forward leaves for the backward, and each phase's peak.
        torch.cuda.synchronize()
        phases = {"resident_before_step": torch.cuda.memory_allocated() / 2**30}
        torch.cuda.reset_peak_memory_stats()
        step(phases)
        results[name][variant]["memory_gib"] = {k: round(v, 2) for k, v in phases.items()}
        print(f"{name:>16} {variant:>5}: memory " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)

    for variant in args.variants:
        run(variant)
        release()
    for count in args.task1_recompute if "fast" in args.variants else []:
        run("fast", count)
        release()


def bench_heads_eval(cfg, processor, workdir, args, results) -> None:
    """Subtask 1 evaluation: vision forward + heads, batch 64 (the seed config's 8 for seed)."""
    def run(variant: str) -> None:
        batch = 8 if variant == "seed" else 64
        model, holder = forensic_model(cfg, variant, lora=False)
        model.eval()
        b = to_device(ImageBatchCollator(processor)(items(workdir, batch)))

        @torch.no_grad()
        def forward():
            with autocast(DEVICE, "bf16"):
                return model(b["pixel_values"], vision_grid(b))

        measure("heads_eval", forward, batch, vision_flops(cfg, 1024), args.steps, results, variant, args.profile)

    for variant in args.variants:
        run(variant)
        release()


def bench_answer_eval(cfg, processor, workdir, args, results) -> None:
    """Subtask 2 / Task 2 evaluation: P(fake) from one batched forward (batch 64); seed: per-image generate."""
    fake_id, real_id = answer_token_ids(processor.tokenizer)
    collate = VisionLanguageCollator(processor, DEFAULT_PROMPT)
    def run(variant: str) -> None:
        model = full_model(cfg, fast=variant == "fast").eval()
        visual = model.model.visual
        inject_adapter_in_model(make_lora_config(vision_block_targets(visual, LAYERS), r=8, alpha=16, dropout=0.0),
                                visual)
        visual.to(torch.bfloat16)
        model.requires_grad_(False)  # as full_model_eval.py and lora_infer.py run it
        batch = 1 if variant == "seed" else 64
        b = to_device(collate(items(workdir, batch)), variant == "fast")
        tokens = int(b["input_ids"].shape[1])
        flops = vision_flops(cfg, 1024) + lm_flops(cfg, tokens)

        if variant == "seed":
            inputs = generate_inputs(b)

            @torch.no_grad()
            def forward():
                model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
        else:
            @torch.no_grad()
            def forward():
                return answer_logits(model, b, fake_id, real_id)

        measure("answer_eval", forward, batch, flops, args.steps * (4 if variant == "seed" else 1), results, variant,
                args.profile)
        results["answer_eval"][variant]["prompt_tokens"] = tokens

    for variant in args.variants:
        run(variant)
        release()


def bench_task2(cfg, processor, workdir, args, results) -> None:
    """Task 2 training: LoRA on ViT blocks + merger, LM loss on the answer, the shipped batch (seed: 1, full logits)."""
    setup = PromptSetup(448, DEFAULT_PROMPT, "Fake", "Real")
    collate = make_collator(processor, setup, train=True)
    def run(variant: str, batch: int | None = None) -> None:
        name = "task2_train" if batch is None else f"task2_train_bs{batch}"
        batch = 1 if variant == "seed" else batch or args.lm_train_batch[0]
        model, _ = attach_lora(full_model(cfg, fast=variant == "fast"), Task2TrainConfig())
        lora = trainable_to_fp32(model)
        opt = torch.optim.AdamW(lora, lr=1e-4)
        full = to_device(model_inputs(collate(items(workdir, batch))), variant == "fast")
        b = answer_only_inputs(full) if variant == "fast" else full
        tokens = int(full["input_ids"].shape[1])
        flops = 3 * lm_flops(cfg, tokens) + 3 * vision_flops(cfg, 1024)
        model.train()
        lora_cast = LoraInputCast(model) if variant == "fast" else None

        def step():
            with autocast(DEVICE, "bf16", lora_cast):
                loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        measure(name, step, batch, flops, args.steps, results, variant, args.profile and name == "task2_train")

    for variant in args.variants:
        run(variant)
        release()
    for batch in args.lm_train_batch[1:] if "fast" in args.variants else []:
        run("fast", batch)
        release()


def bench_task3(cfg, processor, workdir, args, results) -> None:
    """Task 3: hybrid training step (LoRA on ViT + merger + LM, heads, fusion tokens) at the shipped batch (seed: 2), and
    the hybrid_eval forward (batch 64)."""
    train_cfg = Task3TrainConfig()
    train_cfg.lora.merge.enabled = True
    def run(variant: str, batch: int | None = None) -> None:
        name = "task3_train" if batch is None else f"task3_train_bs{batch}"
        batch = 2 if variant == "seed" else batch or args.lm_train_batch[0]
        model, spec = build_hybrid_model(full_model(cfg, fast=variant == "fast"), processor, train_cfg)
        if variant != "fast":
            enable_gradient_checkpointing(model.base)
        optimizer, _ = hybrid_optimizer(model, train_cfg, total_steps=100)
        weights = HybridLossWeights.from_config(train_cfg)
        prompt = spec.hybrid_prompt(processor)
        b = to_device(HybridCollator(processor, prompt, {0: spec.real_word, 1: spec.fake_word})(items(workdir, batch)),
                      variant == "fast")
        tokens = int(b["input_ids"].shape[1])
        flops = 3 * lm_flops(cfg, tokens) + 3 * vision_flops(cfg, 1024)
        lora_cast = LoraInputCast(model.base) if variant == "fast" else None
        measure(name, lambda: train_step(model, b, optimizer, weights, lora_cast=lora_cast), batch, flops,
                args.steps, results, variant, args.profile and name == "task3_train")
        if variant != "seed" and name == "task3_train":
            ids = answer_token_ids(processor.tokenizer, spec.fake_word, spec.real_word)
            e = to_device(HybridCollator(processor, prompt)(items(workdir, 64)), variant == "fast")
            flops = vision_flops(cfg, 1024) + lm_flops(cfg, int(e["input_ids"].shape[1]))
            measure("task3_eval", lambda: eval_batch(model, e, ids), 64, flops, args.steps, results, variant,
                    args.profile)

    for variant in args.variants:
        run(variant)
        release()
    for batch in args.lm_train_batch[1:] if "fast" in args.variants else []:
        run("fast", batch)
        release()


def bench_data(cfg, processor, workdir, args, results) -> None:
    """Host-side cost per image of what the data loader workers do: JPEG decode, letterbox, mask
    binarisation (fakes), and the image processor in the collator, at the user's frame sizes."""
    for h, w in ((720, 1280), (1080, 1920)):
        root = workdir / f"frames_{h}x{w}"
        if not (root / "data").is_dir():
            make_demo_dataset(root, n_train=24, n_test=4, sizes=[(h, w)], frames_per_video=2)
        records = load_index(root / "data" / "trainingset2" / "annotation.json")
        ds = ForgeryDataset(records, root / "data", 448)
        row = {}
        for label in (0, 1):
            picked = [i for i, r in enumerate(records) if r.label == label]
            start = time.perf_counter()
            for i in picked:
                ds[i]
            row[f"item_ms_{'fake' if label else 'real'}"] = 1e3 * (time.perf_counter() - start) / len(picked)
        batch = [ds[i] for i in range(16)]
        start = time.perf_counter()
        ImageBatchCollator(processor)(batch)
        row["collate_ms_per_image"] = 1e3 * (time.perf_counter() - start) / 16
        results.setdefault("data", {})[f"{h}x{w}"] = row
        print(f"data {h}x{w}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)


SECTIONS = {"data": bench_data, "task1": bench_task1, "heads": bench_heads_eval, "answer": bench_answer_eval, "task2": bench_task2,
            "task3": bench_task3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="scratch folder (tiny tokenizer/processor, demo images)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="kernel-time breakdown of the fast variant")
    parser.add_argument("--task1-recompute", nargs="*", type=int, default=[8], metavar="N",
                        help="also measure fast Task 1 training with N frozen blocks recomputed (recompute_blocks)")
    parser.add_argument("--lm-train-batch", nargs="+", type=int, default=[16], metavar="N",
                        help="Task 2 / Task 3 training batch (the shipped configs' 16); more sizes add fast-only rows")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which of fast / loop / seed to measure")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmark_gpu.py needs a CUDA device")
    workdir = Path(args.workdir)
    tiny = workdir / "tiny"
    if not (tiny / "config.json").is_file():
        build_tiny_model(tiny)
    if not (workdir / "data").is_dir():
        make_demo_dataset(workdir)
    processor = load_processor(tiny, 448)
    cfg = seven_b_config(tiny)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "transformers": __import__("transformers").__version__, "image_size": 448,
               "flop_limit_tflops": PEAK_FLOPS / 1e12}
    for section in args.sections:
        try:
            SECTIONS[section](cfg, processor, workdir, args, results)
        except torch.OutOfMemoryError as err:
            results[f"{section}_error"] = f"out of memory: {err}"
            print(f"{section}: out of memory", flush=True)
            release()
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()


