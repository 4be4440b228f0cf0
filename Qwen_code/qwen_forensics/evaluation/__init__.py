"""Evaluation: the prediction loops over an index, gathered in order across processes, and the split
runner every evaluation script uses (``predictions``); the SPEC 7 metrics (``metrics``) and the pixel
scoring at the original resolution beside them (``scoring``); the shared end of every evaluation
script: predictions file, pictures, report, CSV row (``outputs``); the validation-index leak guard
(``leak_guard``); prediction on arbitrary image files for ``predict.py`` and with any task's checkpoint
(``images``); many test sets with one model (``benchmark``); challenge submission files (``submission``); the
perturbed passes of a robustness study and their ``robustness.csv`` (``robustness``); what the local web app
computes, through predict.py's code path (``interactive``).
"""

from qwen_forensics.evaluation.benchmark import Benchmark, benchmark_outputs, parse_sets
from qwen_forensics.evaluation.images import (PREDICT_OUTPUTS, RUN_JSON, CheckpointRunner, HeatmapFiles, ImagePredictor,
                                              Predictions, collect_images, image_rows, primary_score,
                                              write_predictions)
from qwen_forensics.evaluation.interactive import (CheckpointCard, ImageResult, InteractivePredictor, binary_mask,
                                                   checkpoint_card, overlay, row_files, verdict)
from qwen_forensics.evaluation.leak_guard import guard_checkpoint_split, guard_training_split
from qwen_forensics.evaluation.metrics import hybrid_scores, image_report
from qwen_forensics.evaluation.outputs import (REPORT_NAME, PictureWriter, each_batch, evaluation_outputs,
                                               finish_evaluation, generated_columns, prediction_rows)
from qwen_forensics.evaluation.predictions import (SplitEvaluator, answer_logits, answer_scorer, eval_batch,
                                                   predict_heads, predict_hybrid)
from qwen_forensics.evaluation.robustness import ROBUSTNESS_CSV, RobustnessTable, run_conditions
from qwen_forensics.evaluation.scoring import HYBRID_IMAGE_KEYS, HeatmapSource, PixelCounter, score_heads, score_hybrid
from qwen_forensics.evaluation.submission import SubmissionWriter

__all__ = ["Benchmark", "CheckpointCard", "CheckpointRunner", "ImageResult", "InteractivePredictor", "binary_mask",
           "checkpoint_card", "overlay", "row_files", "verdict", "HYBRID_IMAGE_KEYS", "HeatmapFiles", "HeatmapSource", "ImagePredictor", "PREDICT_OUTPUTS",
           "PictureWriter", "PixelCounter", "Predictions", "REPORT_NAME", "ROBUSTNESS_CSV", "RUN_JSON", "RobustnessTable",
           "SplitEvaluator", "SubmissionWriter",
           "answer_logits", "answer_scorer", "benchmark_outputs", "collect_images", "each_batch", "eval_batch",
           "evaluation_outputs", "finish_evaluation", "generated_columns", "guard_checkpoint_split",
           "guard_training_split", "hybrid_scores", "image_report", "image_rows", "parse_sets", "predict_heads",
           "predict_hybrid", "prediction_rows", "primary_score", "run_conditions", "score_heads", "score_hybrid",
           "write_predictions"]
