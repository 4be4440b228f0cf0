"""Report: the self-contained HTML pages (``page``: report.html of every evaluation, compare.html), the
tables they show (``tables``: per-method, mask-area buckets, confusion, gallery choice), the plots
(``plots``, matplotlib), the heatmap pictures (``pictures``), the robustness curves (``robustness``), the
training curves (``training``: training.html) and predict.py's gallery (``gallery``: index.html).
"""

from qwen_forensics.report.page import format_value, html_page, html_table, img, note, write_report
from qwen_forensics.report.plots import bar_chart
from qwen_forensics.report.robustness import robustness_section
from qwen_forensics.report.training import TRAINING_HTML, read_log_rows, write_training_report

__all__ = ["TRAINING_HTML", "bar_chart", "format_value", "html_page", "html_table", "img", "note", "read_log_rows",
           "robustness_section", "write_report", "write_training_report"]
