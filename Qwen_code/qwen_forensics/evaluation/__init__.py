"""Evaluation: the prediction loops over an index, gathered in order across processes, and the split
runner every evaluation script uses (``predictions``); the SPEC 7 metrics (``metrics``) and the pixel
scoring at the original resolution beside them (``scoring``); the shared end of every evaluation
script: predictions file, pictures, report, CSV row (``outputs``); the validation-index leak guard
(``leak_guard``); prediction on arbitrary image files for ``predict.py`` and with any task's checkpoint
(``images``); many test sets with one model (``benchmark``); challenge submission files (``submission``); the
perturbed passes of a robustness study and their ``robustness.csv`` (``robustness``); what the local web app
computes, through predict.py's code path (``interactive``).
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "Benchmark": "benchmark", "benchmark_outputs": "benchmark", "parse_sets": "benchmark",
    "CheckpointRunner": "images", "HeatmapFiles": "images", "ImagePredictor": "images", "PREDICT_OUTPUTS":
    "images", "Predictions": "images", "RUN_JSON": "images", "collect_images": "images", "enlarged_images":
    "images", "image_rows": "images", "primary_score": "images", "write_prediction_gallery": "images",
    "write_predictions": "images",
    "CheckpointCard": "interactive", "ImageResult": "interactive", "InteractivePredictor": "interactive",
    "binary_mask": "interactive", "checkpoint_card": "interactive", "overlay": "interactive", "row_files":
    "interactive", "verdict": "interactive",
    "guard_checkpoint_split": "leak_guard", "guard_training_split": "leak_guard",
    "hybrid_scores": "metrics", "image_report": "metrics",
    "PictureWriter": "outputs", "REPORT_NAME": "outputs", "each_batch": "outputs", "evaluation_outputs": "outputs", "start_evaluation_run": "outputs",
    "finish_evaluation": "outputs", "generated_columns": "outputs", "prediction_rows": "outputs",
    "SplitEvaluator": "predictions", "answer_logits": "predictions", "answer_scorer": "predictions", "eval_batch":
    "predictions", "predict_heads": "predictions", "predict_hybrid": "predictions",
    "ROBUSTNESS_CSV": "robustness", "RobustnessTable": "robustness", "run_conditions": "robustness",
    "HYBRID_IMAGE_KEYS": "scoring", "HeatmapSource": "scoring", "PixelCounter": "scoring", "score_heads":
    "scoring", "score_hybrid": "scoring",
    "SubmissionWriter": "submission",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
