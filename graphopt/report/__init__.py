"""The run report: `document` builds and writes it (JSON, HTML via `html` and `svg`), `table` prints it."""

from graphopt.report.document import build_report, cpu_line, cpu_name, write_json, write_report, write_text_atomic
from graphopt.report.table import format_summary, format_table, pass_status

__all__ = ["build_report", "cpu_line", "cpu_name", "format_summary", "format_table", "pass_status", "write_json",
           "write_report", "write_text_atomic"]
