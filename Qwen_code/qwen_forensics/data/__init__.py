"""Data: the index formats we read (``formats``: ours, IMDLBenCo's pairs and Tp/ + Gt/ folders), index
records and their validation (``records``, ``validate``), letterbox geometry
(``geometry``), the mask rule (``masks``), datasets and collators (``dataset``, ``collate``), Task 2's
training-set format and map job (``lm_records``), video groups, leakage and the video-grouped split
(``leakage``, ``split``), the manipulation method a file name encodes (``methods``) and the robustness
perturbations (``perturb``).
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "HybridCollator": "collate", "ImageBatchCollator": "collate", "TrainerCollator": "collate",
    "VisionLanguageCollator": "collate", "generate_inputs": "collate", "hybrid_inputs": "collate", "make_collator":
    "collate", "model_inputs": "collate", "vision_grid": "collate",
    "ForgeryDataset": "dataset", "Task2ImageDataset": "dataset",
    "FORMAT_NAMES": "formats", "IMAGE_SUFFIXES": "formats", "RECORDS": "formats",
    "check_leakage": "leakage", "video_groups": "leakage",
    "check_images": "lm_records", "images_root": "lm_records", "read_task2_dataset": "lm_records", "run_map":
    "lm_records",
    "MaskRule": "masks",
    "FIELD_GRID": "perturb", "Perturbation": "perturb", "parse_perturbations": "perturb", "perturb_image":
    "perturb",
    "BadIndex": "records", "Record": "records", "load_index": "records", "read_index": "records", "save_index":
    "records",
    "split_by_video": "split",
    "apply_bad_sample_policy": "validate", "load_split": "validate", "validate_index": "validate",
    "validate_records": "validate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
