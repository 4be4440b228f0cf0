"""LoRA target resolution: exact module paths per component, on the full model and the bare tower."""

import pytest
import torch
from peft import get_peft_model, inject_adapter_in_model
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen_forensics.demo.tiny import MROPE_SECTION, TEXT_DIMS, VISION_DIMS
from qwen_forensics.model.lora import check_lora_wrapped, lora_wrapped_modules, make_lora_config
from qwen_forensics.model.lora_targets import (LoraTargetSpec, format_targets, lm_targets, locate_components,
                                               merger_targets, resolve_targets, vision_block_targets,
                                               vision_module_targets)

VISION = {**VISION_DIMS, "out_hidden_size": TEXT_DIMS["hidden_size"]}
TEXT = {**TEXT_DIMS, "vocab_size": 256, "rope_scaling": {"type": "mrope", "mrope_section": MROPE_SECTION}}


def make_full():
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=VISION, text_config=TEXT)).eval()


def make_tower():
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel(Qwen2_5_VLVisionConfig(**VISION)).eval()


BLOCK = ["attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LM = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def test_locate_components():
    assert locate_components(make_full()) == {"visual": "model.visual", "language_model": "model.language_model"}
    assert locate_components(make_tower()) == {"visual": "", "language_model": None}


def test_vision_block_targets_exact_names():
    tower = make_tower()
    assert vision_block_targets(tower, [3, 7]) == [f"blocks.{b}.{m}" for b in (3, 7) for m in BLOCK]
    assert vision_block_targets(tower, [1], ["qkv", "down_proj"], prefix="model.visual") == [
        "model.visual.blocks.1.attn.qkv",
        "model.visual.blocks.1.mlp.down_proj",
    ]


@pytest.mark.parametrize(
    "blocks, modules, match",
    [
        ([32], BLOCK, r"valid indices are 0\.\.31"),
        ([-1], BLOCK, "invalid vision block"),
        ([1, 1], BLOCK, "listed twice"),
        ([], BLOCK, "non-empty"),
        ([1], ["attn.nope"], "does not exist"),
        ([1], ["attn"], "not nn.Linear"),
    ],
)
def test_vision_block_targets_errors(blocks, modules, match):
    with pytest.raises(ValueError, match=match):
        vision_block_targets(make_tower(), blocks, modules)


def test_merger_lm_and_extra_targets():
    full = make_full()
    visual, lm = full.model.visual, full.model.language_model
    assert merger_targets(visual, "model.visual") == ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"]
    assert lm_targets(lm, "all", prefix="model.language_model") == [
        f"model.language_model.layers.{i}.{m}" for i in range(2) for m in LM
    ]
    assert lm_targets(lm, [1], ["q_proj", "v_proj"]) == ["layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]
    with pytest.raises(ValueError, match=r"valid indices are 0\.\.1"):
        lm_targets(lm, [2])
    assert vision_module_targets(visual, ["merger.mlp.0"], "model.visual") == ["model.visual.merger.mlp.0"]
    with pytest.raises(ValueError, match="not nn.Linear"):
        vision_module_targets(visual, ["merger.ln_q"])


def test_resolve_targets_full_model_and_tower():
    spec = LoraTargetSpec(vision_blocks=[3, 7], merger=True, lm_layers=[0])
    targets = resolve_targets(make_full(), spec)
    assert targets == {
        "visual": [f"model.visual.blocks.{b}.{m}" for b in (3, 7) for m in BLOCK],
        "merger": ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
        "vision_extra": [],
        "lm": [f"model.language_model.layers.0.{m}" for m in LM],
    }
    tower_targets = resolve_targets(make_tower(), LoraTargetSpec(vision_blocks=[3, 7], merger=True))
    assert tower_targets["visual"] == [f"blocks.{b}.{m}" for b in (3, 7) for m in BLOCK]
    assert tower_targets["merger"] == ["merger.mlp.0", "merger.mlp.2"]
    with pytest.raises(ValueError, match="no language model"):
        resolve_targets(make_tower(), LoraTargetSpec(lm_layers="all"))
    with pytest.raises(ValueError, match="listed twice"):
        resolve_targets(make_full(), LoraTargetSpec(merger=True, vision_extra_modules=["merger.mlp.0"]))


def test_peft_wraps_exactly_the_targets_full_model():
    # Vision + merger + one LM layer: "mlp.gate_proj" exists in both towers, lm_head and the other LM
    # layer share suffixes with targets; none of them may be wrapped.
    model = make_full()
    targets = resolve_targets(model, LoraTargetSpec(vision_blocks=[7], merger=True, lm_layers=[1]))
    peft_model = get_peft_model(model, make_lora_config(targets, r=4, alpha=8, dropout=0.0))
    wrapped = lora_wrapped_modules(peft_model)
    flat = [n for group in targets.values() for n in group]
    assert sorted(wrapped) == sorted(flat) and len(wrapped) == len(flat) == 5 + 2 + 7
    assert not any(n.startswith("lm_head") or ".blocks.3." in n or ".layers.0." in n for n in wrapped)
    check_lora_wrapped(peft_model, targets)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_peft_vision_only_leaves_lm_untouched():
    model = make_full()
    targets = resolve_targets(model, LoraTargetSpec(vision_blocks=[0, 5]))
    inject_adapter_in_model(make_lora_config(targets, r=2, alpha=4, dropout=0.0), model)
    assert sorted(lora_wrapped_modules(model)) == sorted(targets["visual"])
    assert type(model.model.language_model.layers[0].mlp.gate_proj) is nn.Linear
    assert type(model.lm_head) is nn.Linear


def test_same_names_on_tower_resolve_relative_to_tower():
    tower = make_tower()
    targets = resolve_targets(tower, LoraTargetSpec(vision_blocks=[2]))
    inject_adapter_in_model(make_lora_config(targets, r=2, alpha=4, dropout=0.0), tower)
    assert sorted(lora_wrapped_modules(tower)) == sorted(f"blocks.2.{m}" for m in BLOCK)
    with pytest.raises(ValueError, match="already injected"):
        vision_block_targets(tower, [2])


def test_check_lora_wrapped_detects_mismatch():
    tower = make_tower()
    inject_adapter_in_model(make_lora_config(["blocks.1.attn.qkv"], r=2, alpha=4, dropout=0.0), tower)
    with pytest.raises(RuntimeError, match=r"missing \['blocks.1.attn.proj'\]"):
        check_lora_wrapped(tower, ["blocks.1.attn.qkv", "blocks.1.attn.proj"])


def test_make_lora_config_fields_and_errors():
    cfg = make_lora_config({"visual": ["a.b"], "lm": ["c"]}, r=8, alpha=16, dropout=0.05, bias="lora_only",
                           task_type="CAUSAL_LM")
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias, cfg.task_type) == (8, 16, 0.05, "lora_only", "CAUSAL_LM")
    assert cfg.target_modules == r"(?:a\.b|c)"
    with pytest.raises(ValueError, match="no LoRA targets"):
        make_lora_config({"visual": [], "lm": []}, r=8, alpha=16, dropout=0.0)
    with pytest.raises(ValueError, match="listed twice"):
        make_lora_config(["a", "a"], r=8, alpha=16, dropout=0.0)


def test_format_targets():
    targets = resolve_targets(make_full(), LoraTargetSpec(vision_blocks=[3, 7], merger=True))
    assert format_targets(targets) == "\n".join(
        [
            "LoRA targets (12 modules):",
            "  vision blocks (10):",
            "    model.visual.blocks.3: attn.qkv, attn.proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj",
            "    model.visual.blocks.7: attn.qkv, attn.proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj",
            "  merger (2):",
            "    model.visual.merger.mlp: 0, 2",
            "  language model: none",
        ]
    )


def test_format_targets_groups_by_place_not_by_option():
    """Task 2 names the merger through lora_extra_modules: it shows under merger, with no 'merger: none'."""
    targets = resolve_targets(make_full(), LoraTargetSpec(vision_blocks=[3], vision_extra_modules=["merger.mlp.0"]))
    text = format_targets(targets)
    assert "  merger (1):\n    model.visual.merger.mlp: 0" in text and "merger: none" not in text
