"""The report: one self-contained HTML file plus Markdown, built from an output directory's store."""

from genft.report.build import build_report

__all__ = ["build_report"]
