"""Report: the self-contained HTML pages (``page``: report.html of every evaluation, compare.html), the
tables they show (``tables``: per-method, mask-area buckets, confusion, gallery choice), the plots
(``plots``, matplotlib) and the heatmap pictures (``pictures``).
"""

from qwen_forensics.report.page import format_value, html_page, html_table, img, note, write_report
from qwen_forensics.report.plots import bar_chart

__all__ = ["bar_chart", "format_value", "html_page", "html_table", "img", "note", "write_report"]
