"""Deadlines kept with the job (resume, collect, the same command again) and a fallback that
waits for slow cancellations instead of leaving rows behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import rowprompt
from rowprompt import drive
from rowprompt.api import collect_job, resume_job
from rowprompt.ledger import Ledger
from rowprompt.runner import Runner, RunOptions, prepare
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config

PROMPT = "Say {{ text }}"


@pytest.fixture(autouse=True)
def quick_planner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A three-second margin (a cancellation is seen at the next poll), so deadlines of a few
    seconds leave real time room to work, and the sandbox's real-time speed for jobs resumed
    without --rpm (flags are not stored with the job)."""
    config = tmp_path / "rowprompt.toml"
    config.write_text(
        "[planner]\nfallback_margin_s = 3\nrealtime_rows_per_min = 1200\n", encoding="utf-8"
    )
    monkeypatch.setenv("ROWPROMPT_CONFIG", str(config))


def csv(path: Path, n: int) -> Path:
    frame = pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    )
    frame.to_csv(path, index=False)
    return path


def options(sb: Sandbox, home: Path, **kw: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "prompt": PROMPT,
        "provider": "sandbox",
        "base_url": sb.base_url,
        "home": str(home),
        "poll_interval": 0.2,
    }
    settings.update(kw)
    return settings


def warm_history(home: Path) -> None:
    """Batches of this provider and model that came back in well under a second."""
    with Sandbox(fast_config()) as fast:
        rowprompt.run(
            pd.DataFrame({"text": ["a", "b", "c"]}),
            **options(fast, home, mode="batch", prompt="Warm {{ text }}"),
        )


def stored_deadline(home: Path, job_id: str) -> tuple[float | None, str | None]:
    with Ledger(home) as ledger:
        return ledger.job_deadline(job_id)


def test_a_detached_deadline_job_resumed_still_falls_back_in_time(tmp_path: Path) -> None:
    home, src = tmp_path / "h", csv(tmp_path / "in.csv", 20)
    warm_history(home)
    messages: list[str] = []
    # Batches here take 20 s; the deadline is 8 s away.
    with Sandbox(fast_config(batch_rows_per_second=1.0)) as slow:
        settings = options(slow, home, mode="batch", rpm=1200)
        started = time.time()
        job = rowprompt.submit(src, deadline="8s", on_message=messages.append, **settings)
        assert any("nothing watches the deadline" in m for m in messages), messages
        at, text = stored_deadline(home, job.id)
        assert text == "8s" and at == pytest.approx(started + 8, abs=1.0)
        # The deadline is not part of the job's identity: the command without it is this job.
        settings.pop("poll_interval")
        assert prepare(src, RunOptions(**settings)).job_id == job.id
        # `rowprompt resume` takes no --deadline: the stored one is kept and watched.
        resumed: list[str] = []
        outcome = resume_job(job.id, home=str(home), on_message=resumed.append)
        took = time.time() - started
        billed, asked = slow.batch_lines(), slow.requests()
    assert took < 8, (took, resumed)
    assert any("deadline: kept from the job" in m for m in resumed), resumed
    frame = outcome.frame
    assert frame is not None and list(frame["_status"]) == ["ok"] * 20
    assert set(frame["_via"]) == {"batch", "realtime"}
    assert len(billed) + len(asked) == 20 and all(n == 1 for n in billed.values())


def test_collect_wait_watches_the_stored_deadline(tmp_path: Path) -> None:
    home, src = tmp_path / "h", csv(tmp_path / "in.csv", 20)
    warm_history(home)
    with Sandbox(fast_config(batch_rows_per_second=1.0)) as slow:
        started = time.time()
        job = rowprompt.submit(src, deadline="8s", **options(slow, home, mode="batch", rpm=1200))
        outcome = collect_job(job.id, home=str(home), wait=True, poll_interval=0.2)
        took = time.time() - started
    assert took < 8
    assert outcome.progress.complete and outcome.progress.done == 20
    assert outcome.frame is not None and "realtime" in set(outcome.frame["_via"])


def test_the_same_command_again_keeps_its_deadline(tmp_path: Path, sandbox: Sandbox) -> None:
    home, src = tmp_path / "h", csv(tmp_path / "in.csv", 3)
    settings = options(sandbox, home, mode="realtime")
    rowprompt.run(src, deadline="1h", **settings)
    job_id = prepare(src, RunOptions(**settings)).job_id
    first, text = stored_deadline(home, job_id)
    assert text == "1h" and first is not None
    time.sleep(0.05)
    # `--deadline 1h` again means an hour from the first run, not from this one.
    rowprompt.run(src, deadline="1h", **settings)
    assert stored_deadline(home, job_id) == (first, "1h")
    # Without --deadline the stored one is kept; another deadline replaces it.
    rowprompt.run(src, **settings)
    assert stored_deadline(home, job_id) == (first, "1h")
    rowprompt.run(src, deadline="2h", **settings)
    later, text = stored_deadline(home, job_id)
    assert text == "2h" and later == pytest.approx(time.time() + 7200, abs=5)
    # `--deadline none` drops it.
    rowprompt.run(src, deadline="none", **settings)
    assert stored_deadline(home, job_id) == (None, None)


def test_a_stored_deadline_that_has_passed_is_dropped_and_said(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    home, src = tmp_path / "h", csv(tmp_path / "in.csv", 3)
    settings = options(sandbox, home, mode="realtime")
    rowprompt.run(src, deadline="1h", **settings)
    job_id = prepare(src, RunOptions(**settings)).job_id
    with Ledger(home) as ledger:
        ledger.set_job_deadline(job_id, time.time() - 60, "1h")
        runner = Runner(prepare(src, RunOptions(**settings)), ledger)
        assert runner.deadline_at is None
        assert any("has passed" in note for note in runner.deadline_notes)
        # The same words again start a new deadline rather than keep a passed one.
        again = Runner(prepare(src, RunOptions(deadline="1h", **settings)), ledger)
        assert again.deadline_at == pytest.approx(time.time() + 3600, abs=5)


def test_a_slow_cancellation_is_waited_for_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "h"
    warm_history(home)
    # Cancelling a batch takes 3 s here; the fallback says so after half a second, then waits.
    monkeypatch.setattr(drive, "CANCEL_COLLECT_S", 0.5)
    messages: list[str] = []
    data = pd.DataFrame({"text": [f"row {i}" for i in range(20)]})
    with Sandbox(fast_config(batch_rows_per_second=1.0, batch_finalizing_seconds=3.0)) as slow:
        out = rowprompt.run(
            data,
            **options(slow, home, mode="batch", deadline="8s", rpm=1200),
            on_message=messages.append,
        )
        billed, asked = slow.batch_lines(), slow.requests()
    assert any("still held by batches being cancelled" in m for m in messages), messages
    assert list(out["_status"]) == ["ok"] * 20
    assert set(out["_via"]) == {"batch", "realtime"}
    assert len(billed) + len(asked) == 20 and all(n == 1 for n in billed.values())
