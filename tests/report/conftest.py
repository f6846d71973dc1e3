"""A real ledger for the report tests: jobs run through the sandbox, once per session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.config import FaultConfig
from tests.helpers import fast_config

REVIEWS = (
    "Great product, works well",
    "Terrible, broke in a day",
    "It's okay I guess",
    "Love it!",
    "Would not buy again",
    "Decent value for money",
)


@dataclass(frozen=True)
class Jobs:
    """The home and the ids of the jobs run into it."""

    home: Path
    input_path: Path
    realtime: str
    batch: str
    failing: str
    cached: str


def _table(rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": range(rows), "review": [f"{REVIEWS[i % 6]} (#{i})" for i in range(rows)]}
    )


def run_jobs(root: Path) -> Jobs:
    """A real-time job with injected 429s and 5xx, the same job again in another mode (every
    row from the cache), a batch job split by the queue limit, and a job whose rows fail or
    are refused."""
    home = root / "home"
    source = root / "reviews.csv"
    _table(60).to_csv(source, index=False)
    faults = FaultConfig(error_rate=0.06, rate_limit_storm_requests=3)
    # A limit the job reaches (the sandbox sends it in its headers, as OpenAI does), so the
    # report draws its limit line beside the bars rather than far above them.
    limited = fast_config(latency_ms=20, latency_jitter_ms=20, faults=faults, rpm=1200)
    with Sandbox(limited) as sb:
        rt = rowprompt.run(
            str(source), prompt="Sentiment of: {{ review }}", provider="sandbox",
            base_url=sb.base_url, mode="realtime", home=str(home), concurrency=8,
            output_type="choice:positive,negative,neutral", output=str(root / "rt.csv"),
        )  # fmt: skip
        # Another mode is another job; the rows it shares with the first come from the cache.
        cached = rowprompt.run(
            str(source), prompt="Sentiment of: {{ review }}", provider="sandbox",
            base_url=sb.base_url, mode="auto", home=str(home), concurrency=8,
            output_type="choice:positive,negative,neutral", output=str(root / "cached.csv"),
        )  # fmt: skip
    with Sandbox(fast_config(batch_rows_per_second=300, enqueued_token_limit=500)) as sb:
        batch = rowprompt.run(
            str(source), prompt="Summarise in five words: {{ review }}", provider="sandbox",
            base_url=sb.base_url, mode="batch", home=str(home), poll_interval=0.1,
            output=str(root / "batch.csv"),
        )  # fmt: skip
    rules = [
        {"pattern": "Terrible", "status": 400, "message": "Scripted bad request.",
         "code": "invalid_request"},
        {"pattern": "Would not", "refusal": "I can't help with that."},
    ]  # fmt: skip
    with Sandbox(fast_config(rules=rules)) as sb:
        failing = rowprompt.run(
            _table(12), prompt="Translate: {{ review }}", provider="sandbox",
            base_url=sb.base_url, mode="realtime", home=str(home), max_attempts=2,
        )  # fmt: skip
    assert set(rt["_status"]) == {"ok"} and set(batch["_status"]) == {"ok"}
    assert set(cached["_via"]) == {"cache"}, cached["_via"].value_counts()
    assert {"failed", "refused"} <= set(failing["_status"]), failing[["_status", "_error"]]
    from rowprompt.api import list_jobs

    by_name = {
        (s.job.spec.prompt.split(":")[0], s.job.spec.mode): s.job.id for s in list_jobs(str(home))
    }
    return Jobs(
        home, source, by_name[("Sentiment of", "realtime")],
        by_name[("Summarise in five words", "batch")], by_name[("Translate", "realtime")],
        by_name[("Sentiment of", "auto")],
    )  # fmt: skip


@pytest.fixture(scope="session")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """The shared ledger: read it, never change it (copy it with ``home_copy`` for actions)."""
    return run_jobs(tmp_path_factory.mktemp("report"))


@pytest.fixture
def home_copy(jobs: Jobs, tmp_path: Path) -> Path:
    """A private copy of the shared home, for tests that change jobs (cancel, collect)."""
    target = tmp_path / "home"
    shutil.copytree(jobs.home, target)
    return target
