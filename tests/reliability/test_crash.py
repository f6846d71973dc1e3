"""Crash anywhere (short version): SIGKILL a real job at chosen points, resume, count.

The long campaign (30+ seeded trials across modes) is ``bench/soak.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import crash_trial

CASES = [
    # A real-time job killed right after an answer left the server, before it was recorded.
    ("realtime", "hook:response:POST /v1/chat/completions", "rerun"),
    # A batch created on the server whose id never reached the client: adopt, never recreate.
    ("batch", "hook:response:POST /v1/batches", "resume"),
    # Hybrid killed while writing the output, between the temporary file and the rename.
    ("hybrid", "crash:output_before_replace", "rerun"),
]


@pytest.mark.parametrize(("mode", "kill", "resume_with"), CASES)
def test_killed_job_resumes_with_every_row_once(
    mode: str, kill: str, resume_with: str, tmp_path: Path
) -> None:
    trial = crash_trial(mode, 7, tmp_path, n=24, kill=kill, resume_with=resume_with)
    assert trial.ok, trial
    assert trial.lost == trial.duplicated == trial.wrong == 0
    assert trial.output_at_kill != "HALF-WRITTEN"
