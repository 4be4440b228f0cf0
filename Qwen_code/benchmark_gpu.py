"""GPU throughput and memory at the real Qwen2.5-VL-7B shape, random bf16 weights (no download).

The model dimensions are the published 7B ones (SPEC 5); tokenizer, chat template and image
processor come from the tiny model folder, whose special-token ids the 7B-shaped config reuses, so
the inputs are built by the project's own collators exactly as in the scripts. Images are the
synthetic demo set, letterboxed to 448.

    python Qwen_code/benchmark_gpu.py --workdir /tmp/bench --out results.json [--sections task1 subtask2]

Each section runs with transformers' per-window attention loop and with the batched window
attention (``model/window_attention.py``). Reported per section: images/s after warm-up steps (CUDA-synchronised wall time) and the peak
allocated GPU memory (torch.cuda.max_memory_allocated) in GiB.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import inject_adapter_in_model
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen_forensics.data.collate import ImageBatchCollator, VisionLanguageCollator, model_inputs
from qwen_forensics.lm_eval import answer_logits
from qwen_forensics.data.dataset import ForgeryDataset
from qwen_forensics.data.records import load_index
from qwen_forensics.losses import ForensicLossWeights, forensic_loss
from qwen_forensics.model.forensic import ForensicViT
from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.loader import get_visual, load_processor
from qwen_forensics.model.lora import make_lora_config, vision_block_targets
from qwen_forensics.model.tiny import build_tiny_model
from qwen_forensics.model.window_attention import enable_batched_window_attention
from qwen_forensics.prompts import DEFAULT_PROMPT, answer_token_ids
from qwen_forensics.synthetic import make_demo_dataset
from qwen_forensics.task1 import cast_trainable_to_fp32
from qwen_forensics.task2 import PromptSetup, attach_lora, make_collator
from qwen_forensics.task3 import (HybridCollator, HybridLossWeights, build_hybrid_model, enable_gradient_checkpointing,
                                  eval_batch, hybrid_optimizer, train_step)
from qwen_forensics.task_configs import Task2TrainConfig, Task3TrainConfig
from qwen_forensics.training import autocast

QWEN25_VL_7B = {
    "text": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0,
                 rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, max_position_embeddings=128000),
    "vision": dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, patch_size=14,
                   temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=3584, tokens_per_second=2),
}
LAYERS = [7, 15, 23, 31]
DEVICE = torch.device("cuda")


def seven_b_config(tiny_dir: Path) -> Qwen2_5_VLConfig:
    """7B dimensions with the tiny folder's token ids (so its tokenizer builds valid inputs)."""
    tiny = json.loads((tiny_dir / "config.json").read_text())
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
           if k in tiny}
    text = {**QWEN25_VL_7B["text"], "bos_token_id": tiny.get("bos_token_id"), "eos_token_id": tiny.get("eos_token_id")}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_7B["vision"], **ids)
    cfg._attn_implementation = "sdpa"
    return cfg


def timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def items(workdir: Path, n: int) -> list[dict]:
    records = load_index(workdir / "data" / "trainingset2" / "annotation.json")
    ds = ForgeryDataset(records, workdir / "data", 448)
    return [ds[i % len(ds)] for i in range(n)]


def bench_task1(cfg: Qwen2_5_VLConfig, processor, workdir: Path, batch: int, steps: int, batched: bool) -> dict:
    """One Task 1 training step (LoRA on 4 ViT blocks + heads), vision tower only on the GPU."""
    torch.cuda.reset_peak_memory_stats()
    with DEVICE:
        visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg.vision_config, dtype=torch.bfloat16)
    if batched:
        enable_batched_window_attention(visual)
    visual.requires_grad_(False)
    inject_adapter_in_model(make_lora_config(vision_block_targets(visual, LAYERS), r=8, alpha=16, dropout=0.05), visual)
    lora = cast_trainable_to_fp32(visual)
    heads = ForensicHeads.from_vision_config(visual.config, LAYERS, 512).to(DEVICE)
    model = ForensicViT(visual, LAYERS, heads).train()
    opt = torch.optim.AdamW([{"params": lora, "lr": 1e-4}, {"params": heads.parameters(), "lr": 1e-3}])
    b = ImageBatchCollator(processor)(items(workdir, batch))
    b = {k: v.to(DEVICE) for k, v in b.items()}
    weights = ForensicLossWeights()

    def step():
        with autocast(DEVICE, "bf16"):
            out = model(b["pixel_values"], b["image_grid_thw"])
        loss = forensic_loss(out["cls_logit"].float(), out["heatmap_logit"].float(), b["mask"], b["labels"], weights)
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(list(lora) + list(heads.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, steps, 2)
    result = {"batch": batch, "images_per_s": batch / sec, "s_per_step": sec,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
              "lm_resident": False}
    return result


def bench_subtask2(cfg: Qwen2_5_VLConfig, processor, workdir: Path, batches: list[int], steps: int,
                   batched: bool) -> dict:
    """Full model + visual LoRA: batched answer-token forward, and seed-style per-image generate."""
    torch.cuda.reset_peak_memory_stats()
    with DEVICE:
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16).eval()
    if batched:
        enable_batched_window_attention(model)
    visual = get_visual(model)
    inject_adapter_in_model(make_lora_config(vision_block_targets(visual, LAYERS), r=8, alpha=16, dropout=0.0), visual)
    visual.to(torch.bfloat16)
    fake_id, real_id = answer_token_ids(processor.tokenizer)
    collate = VisionLanguageCollator(processor, DEFAULT_PROMPT)
    out = {}
    for bs in batches:
        b = collate(items(workdir, bs))
        inputs = {k: v.to(DEVICE) for k, v in model_inputs(b).items()}
        rows = torch.arange(bs, device=DEVICE)
        pos = b["answer_positions"].to(DEVICE)

        @torch.no_grad()
        def forward():
            logits = model(**inputs).logits
            return torch.softmax(logits[rows, pos][:, [fake_id, real_id]].float(), -1)[:, 0]

        sec = timed(forward, steps, 1)
        out[f"batched_bs{bs}"] = {"images_per_s": bs / sec, "prompt_tokens": int(inputs["input_ids"].shape[1])}
    one = {k: v.to(DEVICE) for k, v in model_inputs(collate(items(workdir, 1))).items()}

    @torch.no_grad()
    def generate():
        model.generate(**one, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True)

    out["per_image_generate"] = {"images_per_s": 1 / timed(generate, steps * 4, 2)}
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def full_model(cfg: Qwen2_5_VLConfig, batched: bool):
    with DEVICE:
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    if batched:
        enable_batched_window_attention(model)
    return model


def bench_task2(cfg: Qwen2_5_VLConfig, processor, workdir: Path, batches: list[int], steps: int,
                batched: bool) -> dict:
    """Task 2: LM-loss training steps (LoRA on ViT blocks + merger, gradient checkpointing) and
    the lora_infer forward (answer-token logits), at the shipped config's targets."""
    torch.cuda.reset_peak_memory_stats()
    model, _ = attach_lora(full_model(cfg, batched), Task2TrainConfig())
    enable_gradient_checkpointing(model.get_base_model())
    lora = cast_trainable_to_fp32(model)
    opt = torch.optim.AdamW(lora, lr=1e-4)
    setup = PromptSetup(448, DEFAULT_PROMPT, "Fake", "Real")
    out = {}
    for bs in batches:
        b = {k: v.to(DEVICE) for k, v in model_inputs(make_collator(processor, setup, train=True)(items(workdir, bs))).items()}

        def step():
            model.train()
            with autocast(DEVICE, "bf16"):
                loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        sec = timed(step, steps, 2)
        out[f"train_bs{bs}"] = {"s_per_step": sec, "images_per_s": bs / sec,
                                "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "gradient_checkpointing": True}
    fake_id, real_id = answer_token_ids(processor.tokenizer)
    for bs in (16, 64):
        b = {k: v.to(DEVICE) for k, v in make_collator(processor, setup, train=False)(items(workdir, bs)).items()}

        @torch.no_grad()
        def infer():
            model.eval()
            with autocast(DEVICE, "bf16"):
                return answer_logits(model, b, fake_id, real_id)

        out[f"infer_bs{bs}"] = {"images_per_s": bs / timed(infer, steps, 1)}
    return out


def bench_task3(cfg: Qwen2_5_VLConfig, processor, workdir: Path, batches: list[int], steps: int,
                batched: bool) -> dict:
    """Task 3: hybrid training steps (LoRA on ViT + merger + LM, heads, fusion soft tokens, gradient
    checkpointing) and the hybrid_eval forward, at the shipped config's settings."""
    torch.cuda.reset_peak_memory_stats()
    train_cfg = Task3TrainConfig()
    model, spec = build_hybrid_model(full_model(cfg, batched), processor, train_cfg)
    enable_gradient_checkpointing(model.base)
    optimizer, _ = hybrid_optimizer(model, train_cfg, total_steps=100)
    weights = HybridLossWeights.from_config(train_cfg)
    prompt = spec.hybrid_prompt(processor)
    answers = {0: spec.real_word, 1: spec.fake_word}
    out = {"fusion_tokens": train_cfg.fusion_tokens}
    for bs in batches:
        b = {k: v.to(DEVICE) for k, v in HybridCollator(processor, prompt, answers)(items(workdir, bs)).items()}
        torch.cuda.reset_peak_memory_stats()
        sec = timed(lambda: train_step(model, b, optimizer, weights), steps, 2)
        out[f"train_bs{bs}"] = {"s_per_step": sec, "images_per_s": bs / sec,
                                "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "gradient_checkpointing": True}
    ids = answer_token_ids(processor.tokenizer, spec.fake_word, spec.real_word)
    for bs in (16, 64):
        b = {k: v.to(DEVICE) for k, v in HybridCollator(processor, prompt)(items(workdir, bs)).items()}
        out[f"eval_bs{bs}"] = {"images_per_s": bs / timed(lambda: eval_batch(model, b, ids), steps, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="scratch folder (tiny tokenizer/processor, demo images)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--sections", nargs="+", default=["task1", "subtask2", "task2", "task3"],
                        choices=["task1", "subtask2", "task2", "task3"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--windows", nargs="+", default=["loop", "batched"], choices=["loop", "batched"],
                        help="vision window attention: transformers' per-window loop and/or the batched path")
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
               "transformers": __import__("transformers").__version__, "image_size": 448}
    for windows in args.windows:
        batched = windows == "batched"
        if "task1" in args.sections:
            for bs in (4, 16, 64):
                key = f"task1_train_bs{bs}_{windows}"
                results[key] = bench_task1(cfg, processor, workdir, bs, args.steps, batched)
                print(key, json.dumps(results[key]), flush=True)
                torch.cuda.empty_cache()
        if "subtask2" in args.sections:
            key = f"subtask2_eval_{windows}"
            results[key] = bench_subtask2(cfg, processor, workdir, [16, 64], args.steps, batched)
            print(key, json.dumps(results[key]), flush=True)
            torch.cuda.empty_cache()
        if "task2" in args.sections:
            key = f"task2_{windows}"
            results[key] = bench_task2(cfg, processor, workdir, [4, 8], args.steps, batched)
            print(key, json.dumps(results[key]), flush=True)
            torch.cuda.empty_cache()
        if "task3" in args.sections:
            key = f"task3_{windows}"
            results[key] = bench_task3(cfg, processor, workdir, [2, 4], args.steps, batched)
            print(key, json.dumps(results[key]), flush=True)
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
