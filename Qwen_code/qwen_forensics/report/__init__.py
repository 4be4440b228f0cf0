"""Report: the self-contained HTML pages (``page``: report.html of every evaluation, compare.html), the
tables they show (``tables``: per-method, mask-area buckets, confusion, gallery choice), the plots
(``plots``, matplotlib), the heatmap pictures (``pictures``), the robustness curves (``robustness``), the
training curves (``training``: training.html) and predict.py's gallery (``gallery``: index.html).
"""

from qwen_forensics import lazy_exports

# Exported name -> the module of this package that defines it (imported on first use: see ``lazy``).
_EXPORTS = {
    "format_value": "page", "html_page": "page", "html_table": "page", "img": "page", "note": "page",
    "write_report": "page",
    "bar_chart": "plots",
    "robustness_section": "robustness",
    "TRAINING_HTML": "training", "read_log_rows": "training", "write_training_report": "training",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
