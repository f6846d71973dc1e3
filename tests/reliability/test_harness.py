"""The harness's own figures: what counts as lost, and which kill points a soak covers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.reliability.harness import (
    COLLECT_KILL,
    CRASH_POINTS,
    HOOK_POINTS,
    Trial,
    check_output,
    crash_plan,
    expected_answers,
    kill_points,
    record_final,
)

MODES = ("realtime", "batch", "hybrid")


def _output(path: Path, statuses: list[str]) -> Path:
    n = len(statuses)
    answers = expected_answers(n)
    pd.DataFrame(
        {
            "id": [f"a{i}" for i in range(n)],
            "text": [f"row {i}" for i in range(n)],
            "response": [a if s == "ok" else "" for a, s in zip(answers, statuses, strict=True)],
            "_status": statuses,
            "_error": ["" if s != "failed" else "429 quota" for s in statuses],
        }
    ).to_csv(path, index=False)
    return path


def test_a_row_left_pending_after_the_resume_is_lost(tmp_path: Path) -> None:
    # Every id present once with the right answers, the resume exited 0: only the
    # unsettled row shows that the job did not finish.
    final = check_output(
        _output(tmp_path / "o.csv", ["ok", "pending", "ok"]), 3, expected_answers(3)
    )
    for campaign in ("crash", "faults"):
        trial = Trial(campaign, "batch", 0, 3)
        record_final(trial, final)
        assert trial.lost == 1 and not trial.ok, campaign


def test_a_failed_row_fails_a_crash_trial_but_not_a_fault_trial(tmp_path: Path) -> None:
    # A fault trial may fail a row (with its reason); a crash trial injects no fault.
    final = check_output(_output(tmp_path / "o.csv", ["ok", "failed"]), 2, expected_answers(2))
    crash, faults = Trial("crash", "realtime", 0, 2), Trial("faults", "realtime", 0, 2)
    record_final(crash, final)
    record_final(faults, final)
    assert not crash.ok and faults.ok


def test_the_crash_plan_kills_at_every_point_of_every_mode() -> None:
    plan = crash_plan(36, MODES)
    assert len(plan) == 36
    for mode in MODES:
        planned = {kill for m, kill in plan if m == mode}
        assert set(kill_points(mode)) <= planned, mode
        assert None in planned  # and random kills besides
    batch_like = set(kill_points("batch")) | set(kill_points("hybrid"))
    assert {f"hook:{event}:{endpoint}" for event, endpoint in HOOK_POINTS} <= batch_like
    assert COLLECT_KILL in batch_like
    for mode in MODES:
        assert {f"crash:{point}" for point in CRASH_POINTS} <= set(kill_points(mode))
