"""Faults: 5xx, 429 storms, slow answers, dropped connections, bad batches, truncated or
missing output lines, downloads cut short. No row missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rowprompt.cli import main
from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config
from tests.reliability.faults import FAULTS, fault_trial
from tests.reliability.harness import check_output, expected_answers, job_args, make_table


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_row_settles_under_faults(name: str, tmp_path: Path) -> None:
    trial = fault_trial(name, tmp_path, n=30)
    assert trial.ok, trial
    assert trial.faults_served, "the sandbox served no fault: the trial proved nothing"


def test_a_download_that_keeps_breaking_stops_in_one_line_and_resumes(tmp_path: Path) -> None:
    n = 30
    src, home, out = make_table(tmp_path / "in.csv", n), tmp_path / "home", tmp_path / "out.csv"
    with Sandbox(fast_config()) as sb:
        sb.set_faults(FaultConfig(download_cut_rate=1.0))
        args = job_args(src, home, out, sb.base_url, "batch")
        first = CliRunner().invoke(main, args)
        lines = [line for line in first.output.splitlines() if line.strip()]
        assert first.exit_code != 0 and len(lines) == 1, first.output
        assert lines[0].startswith("Error: ") and "could not be downloaded" in lines[0]
        assert "unexpected" not in lines[0]
        sb.set_faults(FaultConfig())
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        final = check_output(out, n, expected_answers(n))
        assert (final.lost, final.duplicated, final.wrong, final.not_ok) == (0, 0, 0, 0)
        stats = sb.stats()
        assert stats["batches_created"] == 1
        assert stats["batch_lines_billed"] == n  # every row paid once
