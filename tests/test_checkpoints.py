"""Checkpoint folder I/O: strict safetensors modules, training state with RNG, adapters across roots."""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLVisionConfig,
                          get_cosine_schedule_with_warmup)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen_forensics.checkpoints.adapters import load_adapter_strict, save_adapter
from qwen_forensics.checkpoints.names import RESOLVED_CONFIG_NAME, TRAINING_STATE_NAME, rng_state_name
from qwen_forensics.checkpoints.tensors import (load_module_safetensors, load_training_state, read_resolved_config,
                                                save_module_safetensors, save_training_state, write_resolved_config)
from qwen_forensics.demo.tiny import MROPE_SECTION, TEXT_DIMS, VISION_DIMS
from qwen_forensics.model.lora import lora_wrapped_modules, make_lora_config
from qwen_forensics.model.lora_targets import LoraTargetSpec, resolve_targets, vision_block_targets

VISION = {**VISION_DIMS, "out_hidden_size": TEXT_DIMS["hidden_size"]}
TEXT = {**TEXT_DIMS, "vocab_size": 256, "rope_scaling": {"type": "mrope", "mrope_section": MROPE_SECTION}}
GRID = torch.tensor([[1, 8, 8], [1, 8, 12]])  # two images of different sizes (112x112, 112x168)
ADAPTER_FILE = "adapter_model.safetensors"


def make_tower():
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel(Qwen2_5_VLVisionConfig(**VISION)).eval()


def make_full():
    torch.manual_seed(1)
    full = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=VISION, text_config=TEXT)).eval()
    # Same vision weights as make_tower(), so tower and full model outputs are comparable.
    full.model.visual.load_state_dict(make_tower().state_dict())
    return full


def pixels():
    g = torch.Generator().manual_seed(2)
    n = int(GRID.prod(dim=1).sum())
    return torch.randn(n, 3 * 2 * 14 * 14, generator=g)


def tower_out(tower):
    with torch.no_grad():
        out = tower(pixels(), grid_thw=GRID)
    return getattr(out, "pooler_output", out)


def randomise_lora(module, seed=3):
    # Fresh LoRA B is zero (a no-op adapter); random values make a lost tensor visible in outputs.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def vision_spec():
    return LoraTargetSpec(vision_blocks=[3, 6], merger=True)


def trained_tower_adapter(tmp_path):
    tower = make_tower()
    targets = resolve_targets(tower, vision_spec())
    inject_adapter_in_model(make_lora_config(targets, r=4, alpha=8, dropout=0.0), tower)
    randomise_lora(tower)
    folder = save_adapter(tower, tmp_path / "adapter")
    return tower, folder


# ---- plain modules -------------------------------------------------------------------------


class Heads(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 1)
        self.norm = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 1)


def test_module_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    src = Heads()
    src.norm.running_mean.fill_(0.25)
    path = tmp_path / "ckpt" / "heads.safetensors"
    save_module_safetensors(src, path, {"visual_layers": "[3, 7]"})
    dst = Heads()
    assert load_module_safetensors(dst, path) == {"visual_layers": "[3, 7]"}
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    assert not list(path.parent.glob(".*tmp"))


def test_module_safetensors_strict_errors_list_everything(tmp_path):
    path = tmp_path / "heads.safetensors"
    state = Heads().state_dict()
    state.pop("fc.bias")
    state["fc.weight"] = torch.zeros(1, 5)
    state["old_head.weight"] = torch.zeros(2)
    save_module_safetensors(state, path)
    with pytest.raises(ValueError) as err:
        load_module_safetensors(Heads(), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing from the file (1): ['fc.bias']" in msg
    assert "unexpected in the file (1): ['old_head.weight']" in msg
    assert "fc.weight: file (1, 5) vs model (1, 4)" in msg
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_module_safetensors(Heads(), tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="str to str"):
        save_module_safetensors(Heads(), path, {"layers": [3, 7]})


def test_module_safetensors_casts_dtype(tmp_path):
    src = Heads().to(torch.bfloat16)
    path = tmp_path / "h.safetensors"
    save_module_safetensors(src, path)
    dst = Heads()
    load_module_safetensors(dst, path)
    assert dst.fc.weight.dtype == torch.float32
    assert torch.equal(dst.fc.weight, src.fc.weight.float())


# ---- training state -----------------------------------------------------------------------


def make_training(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[2].parameters(), "lr": 1e-3}],
        weight_decay=0.01,
    )
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)
    return model, opt, sched


def train_steps(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(16, 4)
        loss = model(x).pow(2).mean() + model(x + float(np.random.rand()) + random.random()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_training_state_resume_reproduces_continuation(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 3)
    save_module_safetensors(model, tmp_path / "model.safetensors")
    save_training_state(tmp_path, opt, sched, step=3, epoch=1, extra={"best_auroc": 0.75, "history": [0.5, 0.75]})
    train_steps(model, opt, sched, 4)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = make_training(seed=99)
    load_module_safetensors(model2, tmp_path / "model.safetensors")
    info = load_training_state(tmp_path, opt2, sched2)
    assert info == {"step": 3, "epoch": 1, "extra": {"best_auroc": 0.75, "history": [0.5, 0.75]}}
    assert sched2.get_last_lr() == pytest.approx(sched.lr_lambdas[0](3) * np.array([1e-2, 1e-3]))
    train_steps(model2, opt2, sched2, 4)
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b)


def test_training_state_files_load_weights_only(tmp_path):
    _, opt, sched = make_training()
    save_training_state(tmp_path, opt, sched, step=0, epoch=0, process_index=0)
    save_training_state(tmp_path, opt, sched, step=0, epoch=0, process_index=1)
    for name in (TRAINING_STATE_NAME, rng_state_name(0), rng_state_name(1)):
        torch.load(tmp_path / name, weights_only=True)


def test_rng_restore_per_process(tmp_path):
    _, opt, sched = make_training()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    save_training_state(tmp_path, opt, sched, step=0, epoch=0, process_index=0)
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    save_training_state(tmp_path, opt, sched, step=0, epoch=0, process_index=1)
    load_training_state(tmp_path, opt, sched, process_index=0)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == draws
    with pytest.raises(FileNotFoundError, match="restore_rng=False"):
        load_training_state(tmp_path, opt, sched, process_index=2)
    load_training_state(tmp_path, opt, sched, process_index=2, restore_rng=False)


class NotPlain:
    """Picklable, but not something torch.load(weights_only=True) accepts."""


def test_training_state_errors(tmp_path):
    _, opt, sched = make_training()
    with pytest.raises(TypeError, match="weights_only"):
        save_training_state(tmp_path, opt, sched, step=0, epoch=0, extra={"obj": NotPlain()})
    assert not (tmp_path / TRAINING_STATE_NAME).exists()
    assert not list(tmp_path.glob(".*tmp"))

    save_training_state(tmp_path, opt, sched, step=0, epoch=0)
    one_group = torch.optim.AdamW(nn.Linear(4, 8).parameters())
    with pytest.raises(ValueError, match=TRAINING_STATE_NAME):
        load_training_state(tmp_path, one_group, None)
    with pytest.raises(FileNotFoundError, match="training state"):
        load_training_state(tmp_path / "missing", opt, sched)


# ---- resolved config ----------------------------------------------------------------------


@dataclass
class _Cfg:
    out_dir: Path = Path("/tmp/x")
    layers: list = field(default_factory=lambda: [3, 7])
    prompt: str = "真 or 假?"


def test_resolved_config_round_trip(tmp_path):
    path = write_resolved_config(tmp_path, _Cfg())
    assert path == tmp_path / RESOLVED_CONFIG_NAME
    assert read_resolved_config(tmp_path) == {"out_dir": "/tmp/x", "layers": [3, 7], "prompt": "真 or 假?"}
    write_resolved_config(tmp_path, {"a": {"b": 1}})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": {"b": 1}}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_resolved_config(tmp_path, {"fn": print})


# ---- adapters -----------------------------------------------------------------------------


def test_tower_adapter_loads_into_tower_and_full_model(tmp_path):
    tower, folder = trained_tower_adapter(tmp_path)
    reference = tower_out(tower)
    assert not torch.allclose(reference, tower_out(make_tower()))

    fresh = make_tower()
    result = load_adapter_strict(fresh, folder)
    assert result.root == "" and result.num_tensors == 2 * (5 * 2 + 2)
    assert torch.equal(tower_out(fresh), reference)

    full = make_full()
    result = load_adapter_strict(full, folder)
    assert result.root == "model.visual"
    assert sorted(lora_wrapped_modules(full)) == sorted(f"model.visual.{n}" for n in lora_wrapped_modules(tower))
    assert torch.equal(tower_out(full.model.visual), reference)


def test_adapter_trained_inside_full_model_loads_into_bare_tower(tmp_path):
    full = make_full()
    visual = full.model.visual
    targets = resolve_targets(visual, vision_spec())
    inject_adapter_in_model(make_lora_config(targets, r=4, alpha=8, dropout=0.0), visual)
    randomise_lora(visual, seed=7)
    folder = save_adapter(full, tmp_path / "adapter")  # finds the tower that carries the adapter
    keys = load_file(folder / ADAPTER_FILE)
    assert all(k.startswith("base_model.model.blocks.") or k.startswith("base_model.model.merger.") for k in keys)
    tower = make_tower()
    assert load_adapter_strict(tower, folder).root == ""
    assert torch.equal(tower_out(tower), tower_out(visual))


def test_tower_adapter_is_a_regular_peft_folder(tmp_path):
    tower, folder = trained_tower_adapter(tmp_path)
    peft_tower = PeftModel.from_pretrained(make_tower(), str(folder))
    assert torch.equal(tower_out(peft_tower.base_model.model), tower_out(tower))


def test_full_model_adapter_round_trip_with_lm(tmp_path):
    full = make_full()
    targets = resolve_targets(full, LoraTargetSpec(vision_blocks=[7], merger=True, lm_layers="all"))
    peft_model = get_peft_model(full, make_lora_config(targets, r=2, alpha=4, dropout=0.0, task_type="CAUSAL_LM"))
    randomise_lora(peft_model, seed=11)
    folder = save_adapter(peft_model, tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        reference = peft_model(input_ids=ids).logits
    fresh = make_full()
    result = load_adapter_strict(fresh, folder, adapter_name="hybrid")
    assert result.root == "" and result.config.task_type == "CAUSAL_LM"
    assert sorted(lora_wrapped_modules(fresh)) == sorted(n for group in targets.values() for n in group)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, reference)
    assert torch.equal(tower_out(fresh.model.visual), tower_out(full.model.visual))


@pytest.mark.parametrize("trainable", [False, True])
def test_adapter_trainable_flag(tmp_path, trainable):
    _, folder = trained_tower_adapter(tmp_path)
    full = make_full()
    load_adapter_strict(full, folder, is_trainable=trainable)
    lora = [p.requires_grad for n, p in full.named_parameters() if "lora_" in n]
    assert lora and all(r == trainable for r in lora)
    assert not any(p.requires_grad for n, p in full.model.visual.named_parameters() if "lora_" not in n)


def _rewrite(folder: Path, edit):
    path = folder / ADAPTER_FILE
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})
    return path


def test_adapter_missing_tensor_fails_loudly(tmp_path):
    _, folder = trained_tower_adapter(tmp_path)
    path = _rewrite(folder, lambda s: s.pop("base_model.model.blocks.6.mlp.up_proj.lora_B.weight"))
    for model in (make_tower(), make_full()):
        missing = r"missing from the file \(1\): \['blocks.6.mlp.up_proj.lora_B.weight'\]"
        with pytest.raises(ValueError, match=missing) as err:
            load_adapter_strict(model, folder)
        assert str(path) in str(err.value)


def test_adapter_renamed_tensor_fails_loudly(tmp_path):
    _, folder = trained_tower_adapter(tmp_path)

    def rename(state):
        state["base_model.model.blocks.3.attn.qkv_old.lora_A.weight"] = state.pop(
            "base_model.model.blocks.3.attn.qkv.lora_A.weight"
        )

    _rewrite(folder, rename)
    with pytest.raises(ValueError, match=r"not found in the model.*blocks.3.attn.qkv_old"):
        load_adapter_strict(make_full(), folder)


def test_adapter_extra_or_reshaped_tensor_fails_loudly(tmp_path):
    _, folder = trained_tower_adapter(tmp_path)
    _rewrite(folder, lambda s: s.update({"base_model.model.blocks.0.attn.qkv.lora_A.weight": torch.zeros(4, 32)}))
    with pytest.raises(ValueError, match=r"unexpected in the file \(1\): \['blocks.0.attn.qkv.lora_A.weight'\]"):
        load_adapter_strict(make_tower(), folder)

    _, folder = trained_tower_adapter(tmp_path / "b")
    _rewrite(folder, lambda s: s.update({"base_model.model.blocks.3.attn.proj.lora_A.weight": torch.zeros(2, 32)}))
    with pytest.raises(ValueError, match=r"blocks.3.attn.proj.lora_A.weight: file \(2, 32\) vs model \(4, 32\)"):
        load_adapter_strict(make_tower(), folder)


def test_adapter_refuses_second_load_and_missing_folder(tmp_path):
    _, folder = trained_tower_adapter(tmp_path)
    full = make_full()
    load_adapter_strict(full, folder)
    with pytest.raises(ValueError, match="already carries LoRA"):
        load_adapter_strict(full, folder)
    with pytest.raises(FileNotFoundError, match="adapter config"):
        load_adapter_strict(make_tower(), tmp_path / "nothing")


def test_loaded_adapter_follows_the_model_mode(tmp_path):
    """A model in eval mode must stay deterministic after the adapter is attached (no live dropout)."""
    from peft.tuners.lora import LoraLayer

    source = make_tower()
    inject_adapter_in_model(make_lora_config(vision_block_targets(source, [1]), r=4, alpha=8, dropout=0.5), source)
    save_adapter(source, tmp_path / "adapter")
    target = make_tower().eval()
    load_adapter_strict(target, tmp_path / "adapter")
    assert not any(m.training for m in target.modules() if isinstance(m, LoraLayer))
