"""The one way to load Qwen2.5-VL: the full model, the vision tower alone, or the processor.

Works the same for a downloaded ``Qwen2.5-VL-7B-Instruct`` folder and for the tiny model written by
``Qwen_code/make_tiny_model.py``. Nothing is ever downloaded (``local_files_only=True``), and every
weight load is strict: a key that is missing or left over is an error, never a silent random init.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from qwen_forensics.config.dtypes import resolve_dtype
from qwen_forensics.model.fast.switch import enable_fast_paths, expected_counts

MODEL_FOLDER_CONTENTS = (
    "config.json, the safetensors weights (model.safetensors, or model-*.safetensors shards with "
    "model.safetensors.index.json), the tokenizer (tokenizer.json, tokenizer_config.json) and "
    "preprocessor_config.json; i.e. a downloaded Qwen2.5-VL-7B-Instruct folder or one written by "
    "`python Qwen_code/make_tiny_model.py --out DIR`"
)

# Released Qwen checkpoints store the tower under "visual."; transformers 5 save_pretrained under "model.visual.".
VISION_KEY_PREFIXES = ("visual.", "model.visual.")
_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"


# The demo's tiny model (``demo.tiny``) carries this file; the loader says what its numbers mean.
TINY_MODEL_MARKER = "TINY_RANDOM_MODEL.txt"
_CAVEATS_SHOWN: set[Path] = set()


def tiny_model_caveat(model_path: str | Path) -> str | None:
    """The caveat for the demo's tiny random model at ``model_path``; None for any other model."""
    path = Path(model_path).expanduser()
    if not (path / TINY_MODEL_MARKER).is_file():
        return None
    return (f"[tiny model] {path} is the demo's tiny Qwen2.5-VL with random weights: its results show that the code "
            "runs and learns, not how well the method works. Expect weak numbers, a Task 2 loss that stays near 5, "
            "answer_text that is not words and chance-level subtask 2; use Qwen2.5-VL-7B-Instruct for real results.")


def check_model_dir(model_path: str | Path) -> Path:
    """Return the folder as a Path, or raise FileNotFoundError saying what a model folder must contain.
    The demo's tiny model gets its caveat printed once per process."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist. It must contain {MODEL_FOLDER_CONTENTS}.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json. It must contain {MODEL_FOLDER_CONTENTS}.")
    caveat = tiny_model_caveat(path)
    if caveat and path.resolve() not in _CAVEATS_SHOWN:
        _CAVEATS_SHOWN.add(path.resolve())
        print(caveat, file=sys.stderr, flush=True)
    return path


def load_model(
    model_path: str | Path,
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    fast_paths: bool = True,
) -> Qwen2_5_VLForConditionalGeneration:
    """Load the full Qwen2.5-VL model in eval mode (on CPU unless ``device`` is given).

    ``fast_paths``: batched window attention, precomputed vision inputs and fused kernels
    (``model.fast``; same outputs up to float order, several times faster on GPU), switched on by
    :func:`switch_fast_paths`; False runs plain transformers.
    """
    path = check_model_dir(model_path)
    kwargs = {}
    if device is not None:
        kwargs["device_map"] = {"": torch.device(device)}
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path,
        dtype=resolve_dtype(dtype),
        attn_implementation=attn_implementation,
        local_files_only=True,
        output_loading_info=True,
        **kwargs,
    )
    problems = {kind: [str(k) for k in info.get(kind) or []] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        raise RuntimeError(f"weights in {path} do not match the model built from its config.json: {_summarise(problems)}")
    if fast_paths:
        switch_fast_paths(model, attn_implementation)
    return model.eval()


def switch_fast_paths(model: nn.Module, attn_implementation: str) -> None:
    """The fast paths on a freshly loaded model, checked against what its config implies (a transformers
    release that renamed a module fails here, naming it); the handle stays on the model as
    ``model.fast_paths`` (``.undo()`` gives plain transformers back)."""
    handle = enable_fast_paths(model)
    handle.check(expected_counts(model, attn_implementation))
    model.fast_paths = handle


def weight_files(model_path: str | Path) -> dict[str, Path]:
    """Map every tensor name in the folder's safetensors weights to the file holding it."""
    path = check_model_dir(model_path)
    index = path / _INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {key: path / file_name for key, file_name in weight_map.items()}
    single = path / _SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as handle:
            return {key: single for key in handle.keys()}
    raise FileNotFoundError(f"model folder {path} has neither {_INDEX_FILE} nor {_SINGLE_FILE}. It must contain {MODEL_FOLDER_CONTENTS}.")


def read_vision_state_dict(model_path: str | Path) -> dict[str, torch.Tensor]:
    """Read only the vision tower's tensors, with the checkpoint's prefix stripped."""
    files = weight_files(model_path)
    found = {prefix: [key for key in files if key.startswith(prefix)] for prefix in VISION_KEY_PREFIXES}
    used = [prefix for prefix, keys in found.items() if keys]
    if len(used) != 1:
        raise RuntimeError(
            f"weights in {model_path} must hold the vision tower under exactly one of the prefixes "
            f"{list(VISION_KEY_PREFIXES)}; found {[f'{p} ({len(found[p])} keys)' for p in used] or 'none'}"
        )
    prefix = used[0]
    by_file: dict[Path, list[str]] = {}
    for key in found[prefix]:
        by_file.setdefault(files[key], []).append(key)
    state = {}
    for file_path, keys in sorted(by_file.items()):
        with safe_open(str(file_path), framework="pt") as handle:
            for key in keys:
                state[key[len(prefix) :]] = handle.get_tensor(key)
    return state


def load_vision_tower(
    model_path: str | Path,
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    fast_paths: bool = True,
) -> Qwen2_5_VisionTransformerPretrainedModel:
    """Build only the vision tower from ``config.vision_config`` and load its weights strictly.

    Task 1 trains on the ViT alone; loading the 7B language model as well would cost ~15 GiB of
    memory for nothing.
    """
    path = check_model_dir(model_path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    # Parameters start on the meta device (no random init of weights about to be replaced); the rotary
    # buffers are not in the checkpoint, so they must be built for real.
    with init_empty_weights(include_buffers=False):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(
            config.vision_config, attn_implementation=attn_implementation
        )
    state = read_vision_state_dict(path)
    expected = set(tower.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        problems = {kind: keys for kind, keys in (("missing_keys", missing), ("unexpected_keys", unexpected)) if keys}
        raise RuntimeError(f"vision weights in {path} do not match config.vision_config: {_summarise(problems)}")
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in tower.state_dict().items()
        if tuple(state[key].shape) != tuple(tensor.shape)
    ]
    if mismatched:
        raise RuntimeError(f"vision weights in {path} have the wrong shapes: {_summarise({'mismatched_keys': mismatched})}")
    # Cast the weights only: module.to(dtype) would also round the float32 rotary inv_freq buffers,
    # which from_pretrained keeps in float32, and the tower would drift from the full model's.
    torch_dtype = resolve_dtype(dtype)
    tower.load_state_dict({key: value.to(torch_dtype) for key, value in state.items()}, strict=True, assign=True)
    if device is not None:
        tower.to(torch.device(device))
    if fast_paths:
        switch_fast_paths(tower, attn_implementation)
    return tower.eval()


def load_processor(model_path: str | Path, image_size: int | None = None):
    """Load the model's processor (tokenizer, chat template, image processor).

    With ``image_size`` the image processor's pixel bounds are pinned to image_size**2, so a letterboxed
    image_size x image_size input reaches the ViT unresized (any other size is resized to that area).
    ``image_size=None`` keeps each image's native resolution within the folder's default bounds.
    """
    path = check_model_dir(model_path)
    if image_size is None:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size={image_size!r} must be a positive int (pixels per side), e.g. 448")
    image_processor = AutoImageProcessor.from_pretrained(
        path, local_files_only=True, min_pixels=image_size**2, max_pixels=image_size**2
    )
    factor = image_processor.patch_size * image_processor.merge_size
    if image_size % factor:
        raise ValueError(
            f"image_size={image_size} must be a multiple of {factor} (patch_size {image_processor.patch_size} "
            f"x merge_size {image_processor.merge_size} in {path / 'preprocessor_config.json'}), e.g. 224 or 448"
        )
    # Passing the image processor in keeps the pixel bounds on the image processor itself; pixel kwargs
    # given to AutoProcessor.from_pretrained are forwarded to every call instead (deprecated in transformers 5).
    return AutoProcessor.from_pretrained(path, local_files_only=True, image_processor=image_processor)


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The module a PEFT wrapper (or a stack of them) wraps; hooks and lookups need the modules that run."""
    seen = set()
    while callable(getattr(model, "get_base_model", None)) and id(model) not in seen:
        seen.add(id(model))
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def get_visual(model: torch.nn.Module) -> Qwen2_5_VisionTransformerPretrainedModel:
    """The vision tower of a Qwen2.5-VL model (``model.model.visual`` in transformers 5), or the tower
    itself when given one; PEFT wrappers are looked through."""
    model = unwrap_peft(model)
    if isinstance(model, Qwen2_5_VisionTransformerPretrainedModel):
        return model
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None)
    if visual is None:
        raise AttributeError(
            f"{type(model).__name__} has no model.visual; expected a transformers>=5 "
            "Qwen2_5_VLForConditionalGeneration (or a PEFT wrapper around one)"
        )
    return visual


def get_language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The text decoder of a Qwen2.5-VL model (``model.model.language_model`` in transformers 5)."""
    inner = getattr(unwrap_peft(model), "model", None)
    language_model = getattr(inner, "language_model", None)
    if language_model is None:
        raise AttributeError(
            f"{type(model).__name__} has no model.language_model; expected a transformers>=5 "
            "Qwen2_5_VLForConditionalGeneration (or a PEFT wrapper around one)"
        )
    return language_model


def _summarise(problems: dict[str, list[str]]) -> str:
    return "; ".join(f"{len(keys)} {kind}: {short_list(keys)}" for kind, keys in problems.items())


_LIST_LIMIT = 20


def short_list(items: list[str]) -> str:
    shown = items[:_LIST_LIMIT]
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"{shown}{more}"
