"""See the work: a self-contained HTML run report and a live local web view of jobs.

Everything here reads the ledger read-only (``mode=ro``), so it is safe to point at a job that
another process is driving: WAL lets readers see committed state without blocking the writer.
"""

from __future__ import annotations

from rowprompt.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
