"""Checkpoints: every on-disk layout the scripts write and read, and nothing else of the library names
those files. Strict tensor I/O (``tensors``), every file and folder name with the earlier scripts'
names mapped onto them (``names``), PEFT adapters (``adapters``), the heads file shared by Tasks 1
and 3 (``heads``), one module per task (``task1``, ``task2``, ``task3``), what an evaluation config
repeats from training (``notes``), which task wrote a folder (``detect``, for predict.py) and the
run folder with its manifest and ``previous_runs/`` (``runs``).

Task 1 (``lora_train.py``: ``epoch_N/``, ``best_by_*/`` and the final ``final_trained_heads``)::

    adapter/                    PEFT adapter of the vision tower (names relative to the tower)
    heads.safetensors           forensic heads; metadata "heads_config" (constructor args), "visual_layers"
    resolved_config.json        the training config
    training_state.pt, rng_state_*.pt   for resume

Task 2: LORA.py's adapter folder (PEFT format) whose ``resolved_config.json`` also records the
prompt setup (image size, prompt, answer words) that evaluation reads back (``adapter_setup``).

Task 3 (``hybrid_train.py`` writes one folder per epoch; the final one's three weight paths come from
``lora_checkpoint`` / ``head_checkpoint`` / ``fusion_checkpoint``)::

    adapter/                 one PEFT adapter over the full model (names relative to it); absent
                             when every LoRA component is switched off
    heads.safetensors        forensic heads, as in Task 1
    fusion.safetensors       fusion projector (no tensors with fusion_tokens = 0); metadata
                             "fusion_config" and "hybrid_spec" (prompt, answer words, image size,
                             tapped layers, LoRA targets): everything needed to rebuild the model
    resolved_config.json, training_state.pt, rng_state_*.pt

The seed's evaluation configs repeat training settings (LoRA rank, layers, answer words); the
checkpoint's own are what is loaded, and a repeated value that differs is reported.

The run folder (``runs``): ``run_manifest.json`` and ``previous_runs/<start time>/``.
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "load_adapter_strict": "adapters", "save_adapter": "adapters",
    "Checkpoint": "detect", "CheckpointError": "detect", "MODEL_KEYS": "detect", "base_model_path": "detect",
    "detect_checkpoint": "detect", "open_checkpoint": "detect",
    "load_heads": "heads",
    "best_dir": "names", "epoch_dir": "names",
    "check_seed_lora_keys": "notes", "lora_config_notes": "notes", "seed_key_notes": "notes",
    "Run": "runs", "start_config_run": "runs", "start_run": "runs",
    "attach_task1_checkpoint": "task1", "attach_task1_lora": "task1", "checkpoint_image_size": "task1",
    "resume_task1": "task1", "save_task1_checkpoint": "task1",
    "adapter_setup": "task2", "resolve_infer_setup": "task2",
    "CheckpointPaths": "task3", "answer_ids_for": "task3", "load_hybrid_model": "task3", "read_hybrid_spec":
    "task3", "save_task3_checkpoint": "task3",
    "load_training_state": "tensors", "read_resolved_config": "tensors", "write_resolved_config": "tensors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
