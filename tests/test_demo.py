"""`make demo` works and leaves a correct spreadsheet.

The demo writes next to itself (examples/out), so it runs from a copy of examples/ in a
temporary directory and the checkout stays clean. It takes about ten seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import openpyxl
import pandas as pd

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The rating a reviewer gave, read as the sentiment the scripted answers should agree with.
SENTIMENT_OF_RATING = {
    "1": "negative",
    "2": "negative",
    "3": "neutral",
    "4": "positive",
    "5": "positive",
}


def test_make_demo_leaves_a_correct_xlsx_and_csv(tmp_path: Path) -> None:
    before = _snapshot(EXAMPLES / "out")
    here = tmp_path / "examples"
    shutil.copytree(EXAMPLES, here, ignore=shutil.ignore_patterns("out", "__pycache__"))
    done = subprocess.run(
        [sys.executable, str(here / "demo.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = here / "out"
    batch_path, realtime_path = out / "reviews-batch.xlsx", out / "reviews-realtime.csv"
    # It says where the results are, and sums them up.
    assert f"results:   {batch_path}" in done.stdout
    assert str(realtime_path) in done.stdout
    assert "batch:     300 rows, statuses {'ok': 300}" in done.stdout

    source = pd.read_csv(EXAMPLES / "reviews.csv", dtype=str, keep_default_na=False)
    assert len(source) == 300
    batch = pd.read_excel(batch_path, dtype=str, keep_default_na=False)
    assert list(batch.columns[: len(source.columns)]) == list(source.columns)
    assert list(batch.columns[len(source.columns) :]) == [
        "response", "_status", "_error", "_raw", "_prompt_tokens", "_completion_tokens",
        "_cost_usd", "_via",
    ]  # fmt: skip
    # Every input cell comes back as it was: quotes, newlines, emoji, cells starting with "=".
    pd.testing.assert_frame_equal(batch[source.columns], source)
    assert set(batch["_status"]) == {"ok"}
    assert set(batch["_via"]) == {"batch"}
    assert set(batch["response"]) == {"positive", "negative", "neutral"}
    agree = (batch["rating_given"].map(SENTIMENT_OF_RATING) == batch["response"]).mean()
    assert agree >= 0.9, f"scripted answers agree with the ratings on only {agree:.1%}"
    assert pd.to_numeric(batch["_cost_usd"]).sum() > 0

    # A cell that starts with "=" is text in the workbook, never a formula.
    sheet = openpyxl.load_workbook(batch_path).active
    assert sheet is not None
    formulas = [c.coordinate for row in sheet.iter_rows() for c in row if c.data_type == "f"]
    assert formulas == []

    realtime = pd.read_csv(realtime_path, dtype=str, keep_default_na=False)
    assert list(realtime["review_id"]) == list(source["review_id"][:20])
    assert set(realtime["_status"]) == {"ok"} and set(realtime["_via"]) == {"realtime"}
    # The same prompt and rules give the same answers in both modes.
    assert list(realtime["response"]) == list(batch["response"][:20])
    # The checkout's own examples/out was left alone.
    assert _snapshot(EXAMPLES / "out") == before


def _snapshot(folder: Path) -> dict[str, int]:
    if not folder.exists():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
