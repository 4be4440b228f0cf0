"""Model: loading Qwen2.5-VL (or only its vision tower) from a Hugging Face folder (``loader``), the
ViT feature tap and its token order (``tap``), the forensic heads (``heads``) and Task 1's model on
the tower (``forensic``), which modules get LoRA (``lora_targets``) and the injection (``lora``),
Task 3's hybrid model (``hybrid``), the host-side mRoPE positions (``mrope``) and the fast vision
and LM paths with their switch (``fast``).
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "ForensicViT": "forensic",
    "ForensicHeads": "heads",
    "HybridModel": "hybrid", "HybridPrompt": "hybrid", "HybridSpec": "hybrid", "build_hybrid_model": "hybrid",
    "MODEL_FOLDER_CONTENTS": "loader", "get_visual": "loader", "load_model": "loader", "load_processor": "loader",
    "load_vision_tower": "loader",
    "LoraInputCast": "lora", "attach_lora": "lora", "make_lora_config": "lora", "trainable_to_fp32": "lora",
    "vision_inputs_require_grad": "lora",
    "format_targets": "lora_targets", "vision_block_targets": "lora_targets",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
