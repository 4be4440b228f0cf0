"""Model: loading Qwen2.5-VL (or only its vision tower) from a Hugging Face folder (``loader``), the
ViT feature tap and its token order (``tap``), the forensic heads (``heads``) and Task 1's model on
the tower (``forensic``), which modules get LoRA (``lora_targets``) and the injection (``lora``),
Task 3's hybrid model (``hybrid``), the host-side mRoPE positions (``mrope``) and the fast vision
and LM paths with their switch (``fast``).
"""

from qwen_forensics.model.forensic import ForensicViT
from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.hybrid import HybridModel, HybridPrompt, HybridSpec, build_hybrid_model
from qwen_forensics.model.loader import MODEL_FOLDER_CONTENTS, get_visual, load_model, load_processor, load_vision_tower
from qwen_forensics.model.lora import (LoraInputCast, attach_lora, make_lora_config, trainable_to_fp32,
                                       vision_inputs_require_grad)
from qwen_forensics.model.lora_targets import format_targets, vision_block_targets

__all__ = ["ForensicHeads", "ForensicViT", "HybridModel", "HybridPrompt", "HybridSpec", "LoraInputCast",
           "MODEL_FOLDER_CONTENTS", "attach_lora", "build_hybrid_model", "format_targets", "get_visual", "load_model",
           "load_processor", "load_vision_tower", "make_lora_config", "trainable_to_fp32", "vision_block_targets",
           "vision_inputs_require_grad"]
