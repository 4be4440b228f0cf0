"""Report: the self-contained HTML pages (``page``: report.html of every evaluation, compare.html), the
tables they show (``tables``: per-method, mask-area buckets, confusion, gallery choice), the plots
(``plots``, matplotlib), the heatmap pictures (``pictures``) and the robustness curves (``robustness``).
"""

from qwen_forensics.report.page import format_value, html_page, html_table, img, note, write_report
from qwen_forensics.report.plots import bar_chart
from qwen_forensics.report.robustness import robustness_section

__all__ = ["bar_chart", "format_value", "html_page", "html_table", "img", "note", "robustness_section", "write_report"]
