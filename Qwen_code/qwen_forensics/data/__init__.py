"""Data: the index formats we read (``formats``: ours, IMDLBenCo's pairs and Tp/ + Gt/ folders), index
records and their validation (``records``, ``validate``), letterbox geometry
(``geometry``), the mask rule (``masks``), datasets and collators (``dataset``, ``collate``), Task 2's
training-set format and map job (``lm_records``), video groups, leakage and the video-grouped split
(``leakage``, ``split``), the manipulation method a file name encodes (``methods``) and the robustness
perturbations (``perturb``).
"""

from qwen_forensics.data.collate import (HybridCollator, ImageBatchCollator, TrainerCollator, VisionLanguageCollator,
                                         generate_inputs, hybrid_inputs, make_collator, model_inputs, vision_grid)
from qwen_forensics.data.dataset import ForgeryDataset, Task2ImageDataset
from qwen_forensics.data.formats import FORMAT_NAMES, IMAGE_SUFFIXES, RECORDS
from qwen_forensics.data.leakage import check_leakage, video_groups
from qwen_forensics.data.lm_records import check_images, images_root, read_task2_dataset, run_map
from qwen_forensics.data.masks import MaskRule
from qwen_forensics.data.perturb import FIELD_GRID, Perturbation, parse_perturbations, perturb_image
from qwen_forensics.data.records import BadIndex, Record, load_index, read_index, save_index
from qwen_forensics.data.split import split_by_video
from qwen_forensics.data.validate import apply_bad_sample_policy, load_split, validate_index, validate_records

__all__ = ["BadIndex", "FIELD_GRID", "FORMAT_NAMES", "ForgeryDataset", "HybridCollator", "IMAGE_SUFFIXES",
           "ImageBatchCollator", "MaskRule", "Perturbation", "RECORDS", "Record", "Task2ImageDataset",
           "TrainerCollator", "VisionLanguageCollator", "apply_bad_sample_policy", "check_images", "check_leakage",
           "generate_inputs", "hybrid_inputs", "images_root", "load_index", "load_split", "make_collator",
           "model_inputs", "parse_perturbations", "perturb_image", "read_index", "read_task2_dataset", "run_map",
           "save_index", "split_by_video", "validate_index", "validate_records", "video_groups", "vision_grid"]
