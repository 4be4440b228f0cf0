"""What the config classes of all tasks share: the user's default locations, the ViT LoRA modules, checks
and the mask rule section."""

from __future__ import annotations

from dataclasses import dataclass

from qwen_forensics.config.loading import DEFAULT_ROOT, ConfigError, option
from qwen_forensics.data.perturb import SPEC_HELP, parse_perturbations

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


SAVE_HEATMAPS_HELP = ("heatmaps/ pictures (image | ground truth | overlay): gallery = the first num_heatmaps records, "
                      "all = one per image, none = no heatmaps/ folder (the report's gallery is always drawn)")
GPU_MEMORY_HELP = ("plan the run for a card with this much GPU memory in GiB (e.g. 24): the check before the first "
                   "step, which stops a batch that would not fit and names the keys that make it fit, uses it instead "
                   "of the card's own (null: the card's)")
EXPORT_SUBMISSION_HELP = ("folder for a challenge submission (IJCAI 2025 DDL layout): prediction.txt with one "
                          "'{image file name},{p_fake:.4f}' line per image, mask/{image stem}.png (0/255 at the "
                          "original size, pixel_threshold) and submission.zip; a name is a folder in out_dir "
                          "(null: none)")
PERTURB_SEED_HELP = ("seed of the perturbations' random draws (JPEG quality, noise), combined per image with the "
                     "condition and a checksum of its pixels: the same seed gives the same rows")


def perturb_option():
    """The ``perturb`` key of the evaluation configs (``--perturb SPEC...``; ``data.perturb``)."""
    return option(factory=list, help=SPEC_HELP, flag="--perturb", flag_list=True)


def perturb_seed_option():
    """The ``perturb_seed`` key of the evaluation configs (``--perturb-seed N``)."""
    return option(0, PERTURB_SEED_HELP, flag="--perturb-seed", flag_json=True)


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


# The value checks every config shares, by field name (a field a class does not have, or None, is skipped).
_POSITIVE = ("epochs", "batch_size", "grad_accum", "max_steps", "lora_r", "map_batch_size", "lr_head", "lr_lora",
             "lr_fusion", "lr_lora_lm", "gpu_memory_gib")
_AT_LEAST_ZERO = ("num_workers", "num_heatmaps", "max_new_tokens", "recompute_blocks", "fusion_tokens", "weight_decay",
                  "max_norm")
_FRACTIONS = ("pixel_threshold", "evi_alpha", "warmup_ratio", "lora_dropout", "fusion_hidden_dropout")


def check_values(cfg) -> None:
    """The range checks of :data:`_POSITIVE`, :data:`_AT_LEAST_ZERO` and :data:`_FRACTIONS` ([0, 1]) and the
    ``perturb`` conditions (``data.perturb.parse_perturbations``), run by every config class's
    ``__post_init__`` (so a config built in Python is checked too)."""
    present = {name: getattr(cfg, name) for name in (*_POSITIVE, *_AT_LEAST_ZERO, *_FRACTIONS)
               if getattr(cfg, name, None) is not None}
    # Every bad value at once (one line each): a user fixing a config should not meet them one run at a time.
    problems = []
    for name, value in present.items():
        if name in _POSITIVE and value <= 0:
            problems.append(f"{name}={value}: must be > 0")
        if name in _AT_LEAST_ZERO and value < 0:
            problems.append(f"{name}={value}: must be 0 or more")
        if name in _FRACTIONS and not 0 <= value <= 1:
            problems.append(f"{name}={value}: must be in [0, 1]")
    if getattr(cfg, "perturb", None):
        try:
            parse_perturbations(cfg.perturb)
        except ValueError as err:
            problems.append(f"perturb: {err}")
    if problems:
        raise ConfigError("\n".join(problems))


@dataclass
class MaskRuleConfig:
    """How a soft JPEG mask becomes a binary ground truth (applied once, at the original resolution)."""
    rel: float = option(0.2, "pixel is forged if mask >= rel * quantile(mask, q), mask scaled to [0, 1]")
    quantile: float = option(0.99, "the quantile q of the rule above (0.99 = the seed's p99)")


