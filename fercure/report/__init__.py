"""The review report: one self-contained, offline HTML file (see ``fercure.report.page``).

Modules: ``columns`` (the audit column names read, in one place), ``data`` (pure: which rows are
listed, flags, confidence bands, calibration bins, duplicate groups), ``thumbs`` (JPEG data: URIs
within a byte budget), ``svg`` (charts), ``page`` (the HTML), report.css and report.js (inline).
"""

from fercure.report.page import render_report
from fercure.report.svg import histogram_svg
from fercure.report.thumbs import thumbnail_data_uri

__all__ = ["render_report", "histogram_svg", "thumbnail_data_uri"]
