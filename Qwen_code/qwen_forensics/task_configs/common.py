"""What the config classes of all tasks share: the user's default locations, the ViT LoRA modules, checks
and the mask rule section."""

from __future__ import annotations

from dataclasses import dataclass

from qwen_forensics.config.loading import DEFAULT_ROOT, ConfigError, option

MODEL = f"{DEFAULT_ROOT}/Qwen2.5-VL-7B-Instruct"
DATA = f"{DEFAULT_ROOT}/data"
T1 = f"{DEFAULT_ROOT}/task1_modular_lora"
T2 = f"{DEFAULT_ROOT}/task2_lm_lora"
T3 = f"{DEFAULT_ROOT}/task3_hybrid_lora"
# The earlier evaluation scripts' names of the two output files, accepted by every evaluation config.
EVAL_OUTPUT_ALIASES = {"metrics_csv": "csv_path", "inference_output": "output_json"}
# Keys a resume may change without starting another run (``runs``): how long it goes on and how fast it reads.
RESUME_MAY_CHANGE = ("resume", "epochs", "max_steps", "num_workers")
VIT_LORA_MODULES = ["attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


ALLOW_VAL_OVERLAP_HELP = ("run even when the validation index shares video groups with the training index "
                          "(warned; the overlap counts are recorded with the results). Off: the script stops "
                          "before loading a model, since a leaked validation set inflates every number taken from it")


FAST_PATHS_HELP = ("the fast paths (batched window attention, fused kernels; same results up to float summation "
                   "order, several times faster on a GPU); false runs plain transformers")


def check_image_size(image_size: int | None, allow_none: bool) -> None:
    """A positive side length. Whether it is a multiple of the model's patch x merge factor (28 for
    Qwen2.5-VL) is checked against the model folder's image processor when the script loads it
    (``model.loader.load_processor``), before any weights load."""
    if image_size is None:
        if not allow_none:
            raise ConfigError("image_size: null is not allowed here; give the letterbox side, e.g. 448")
        return
    if image_size <= 0:
        raise ConfigError(f"image_size={image_size}: must be positive, e.g. 448")


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name}={value}: must be > 0")


@dataclass
class MaskRuleConfig:
    """How a soft JPEG mask becomes a binary ground truth (applied once, at the original resolution)."""
    rel: float = option(0.2, "pixel is forged if mask >= rel * quantile(mask, q), mask scaled to [0, 1]")
    quantile: float = option(0.99, "the quantile q of the rule above (0.99 = the seed's p99)")


