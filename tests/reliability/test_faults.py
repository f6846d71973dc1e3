"""Faults: 5xx, 429 storms, slow answers, dropped connections, bad batches. No row missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.faults import FAULTS, fault_trial


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_row_settles_under_faults(name: str, tmp_path: Path) -> None:
    trial = fault_trial(name, tmp_path, n=30)
    assert trial.ok, trial
    assert trial.faults_served, "the sandbox served no fault: the trial proved nothing"
