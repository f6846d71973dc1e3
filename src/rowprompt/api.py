"""The Python API: ``run``, ``submit``, ``estimate`` and ``Job``; the CLI calls these too."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import pandas as pd

from rowprompt import costs
from rowprompt.drive import batch_engine, follow_batches
from rowprompt.errors import UsageError
from rowprompt.estimator import Estimate
from rowprompt.jobs import JobProgress, JobState
from rowprompt.ledger import JobRecord, Ledger, ShardRecord
from rowprompt.providers import open_provider
from rowprompt.runner import (
    Runner,
    RunOptions,
    options_for_job,
    prepare,
    reopen,
    run_sync,
)

Source = str | os.PathLike[str] | pd.DataFrame
# How long `cancel` waits for the provider to finish cancelling, to keep partial results.
CANCEL_WAIT_S = 60.0

__all__ = [
    "Estimate",
    "Job",
    "JobStatus",
    "Outcome",
    "estimate",
    "run",
    "submit",
]


@dataclass(frozen=True)
class Summary:
    """After a run: rows by status, tokens, what it cost and what it saved."""

    statuses: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    batch_saved_usd: float
    cache_saved_usd: float


def summarize(frame: pd.DataFrame, model: str, provider: str) -> Summary:
    """Count an output table's rows and price what batch mode and the cache saved."""
    priced_as = "openai" if provider == "sandbox" else provider
    batch_saved = cache_saved = 0.0
    # Embeddings tables have no _completion_tokens: their answers have none.
    completions = frame.get("_completion_tokens", pd.Series(0, index=frame.index))
    for via, prompt, completion, cost in zip(
        frame["_via"],
        frame["_prompt_tokens"],
        completions,
        frame["_cost_usd"],
        strict=True,
    ):
        if via not in ("batch", "cache") or pd.isna(prompt) or pd.isna(completion):
            continue
        full = costs.cost_usd(model, int(prompt), int(completion), provider=priced_as)
        if full is None:
            continue
        paid = 0.0 if pd.isna(cost) else float(cost)
        if via == "batch":
            batch_saved += full - paid
        else:
            cache_saved += full
    counts = frame["_status"].value_counts()
    return Summary(
        statuses={str(k): int(v) for k, v in counts.items()},
        prompt_tokens=int(frame["_prompt_tokens"].fillna(0).sum()),
        completion_tokens=int(completions.fillna(0).sum()),
        cost_usd=float(frame["_cost_usd"].fillna(0).sum()),
        batch_saved_usd=batch_saved,
        cache_saved_usd=cache_saved,
    )


@dataclass
class Outcome:
    """What a command did: the job, its counts, where the table went."""

    job_id: str
    progress: JobProgress
    output_path: str | None
    detached: bool = False
    frame: pd.DataFrame | None = None
    summary: Summary | None = None
    stopped: bool = False
    budget_short_usd: float | None = None


@dataclass
class JobStatus:
    """A job with its counts and batches."""

    job: JobRecord
    progress: JobProgress
    shards: list[ShardRecord] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``done``, ``cancelled``, ``running`` or ``waiting`` (batches submitted)."""
        if self.job.state != JobState.RUNNING:
            return str(self.job.state)
        if self.progress.complete:
            return "done"
        return (
            "waiting"
            if any((s.batch_id or s.waiting) for s in self.shards if s.finished_at is None)
            else "running"
        )


def _make_options(options: RunOptions | None, kwargs: dict[str, Any]) -> RunOptions:
    known = {f.name for f in fields(RunOptions)}
    unknown = set(kwargs) - known
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    base = options or RunOptions()
    for name, value in kwargs.items():
        setattr(base, name, value)
    return base


def run_job(source: Source, options: RunOptions) -> Outcome:
    """Prepare, drive and write one job (the body of ``rowprompt run``)."""
    prepared = prepare(source, options)
    runner = Runner(prepared)
    try:
        run_sync(runner.run)
        progress = runner.ledger.progress(prepared.job_id)
        if options.detach and not progress.complete:
            return Outcome(prepared.job_id, progress, None, detached=True)
        frame = runner.write_output()
        out = str(prepared.output) if prepared.output and options.write_output else None
        summary = summarize(frame, prepared.spec.model, prepared.spec.provider)
        more = runner.budget.refused_usd if runner.budget and runner.budget.refused_usd else None
        return Outcome(
            prepared.job_id,
            progress,
            out,
            frame=frame,
            summary=summary,
            stopped=runner.stopped,
            budget_short_usd=more,
        )
    finally:
        runner.ledger.close()


def run(source: Source, prompt: str | None = None, **kwargs: Any) -> pd.DataFrame:
    """Run ``prompt`` over every row of a table (a path or a DataFrame); the answers as a table.

    Takes the options of ``rowprompt run`` as keyword arguments (``model=``, ``mode=``,
    ``provider=``, ``output=``, ...). Running the same call again resumes the same job.
    """
    options = _make_options(None, {"prompt": prompt, **kwargs} if prompt is not None else kwargs)
    outcome = run_job(source, options)
    assert outcome.frame is not None
    return outcome.frame


def estimate(
    source: Source,
    prompt: str | None = None,
    *,
    options: RunOptions | None = None,
    pilot: int | None = None,
    **kwargs: Any,
) -> Estimate:
    """Rows, tokens, cost and duration in each mode, and advice.

    Spends nothing, unless ``pilot`` asks for that many rows to be run in real time first to
    measure the answers' length (their answers are kept: the run that follows reuses them).
    """
    if prompt is not None:
        kwargs["prompt"] = prompt
    opts = _make_options(options, kwargs)
    prepared = prepare(source, opts)
    pilot_tokens: float | None = None
    pilot_rows = 0
    if pilot:
        if pilot < 1:
            raise UsageError("--pilot must be at least 1")
        pilot_rows = min(pilot, len(prepared.table))
        # The pilot keeps --budget: it spends no more than the run may, and its requests carry
        # the same cap as the run's, so the run that follows reuses its answers.
        pilot_options = replace(
            opts, mode="realtime", limit=pilot_rows, write_output=False, detach=False
        )
        outcome = run_job(
            prepared.table.frame if isinstance(source, pd.DataFrame) else source, pilot_options
        )
        assert outcome.frame is not None
        measured = outcome.frame["_completion_tokens"].dropna()
        if len(measured):
            pilot_tokens = float(measured.mean())
    runner = Runner(prepared)
    try:
        return runner.estimate(pilot_tokens, pilot_rows)
    finally:
        runner.ledger.close()


class Job:
    """A submitted job: look at it, wait for it, take its results."""

    def __init__(self, job_id: str, *, home: str | None = None, frame: pd.DataFrame | None = None):
        self.id = job_id
        self.home = home
        self._frame = frame

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobStatus:
        """The job's counts and batches now."""
        return job_status(self.id, self.home)

    def wait(self, *, poll_interval: float | None = None) -> JobStatus:
        """Block until every row has ended; returns the final status."""
        collect_job(
            self.id,
            home=self.home,
            wait=True,
            frame=self._frame,
            poll_interval=poll_interval,
            write=False,
        )
        return self.status()

    def results(self) -> pd.DataFrame:
        """The output table as it stands (rows not finished have ``_status`` ``pending``)."""
        outcome = collect_job(self.id, home=self.home, wait=False, frame=self._frame, write=False)
        assert outcome.frame is not None
        return outcome.frame

    def resume(self) -> pd.DataFrame:
        """Drive the job to its end (as :func:`resume_job`, with its stored run settings);
        the output table."""
        outcome = resume_job(self.id, home=self.home, frame=self._frame)
        assert outcome.frame is not None
        return outcome.frame

    def cancel(self) -> None:
        """Cancel the job and its batches."""
        cancel_job(self.id, home=self.home, frame=self._frame)


def submit(source: Source, prompt: str | None = None, **kwargs: Any) -> Job:
    """Submit a job and return at once (batches keep running at the provider)."""
    kwargs.setdefault("mode", "batch")
    kwargs["detach"] = True
    if prompt is not None:
        kwargs["prompt"] = prompt
    options = _make_options(None, kwargs)
    outcome = run_job(source, options)
    frame = source if isinstance(source, pd.DataFrame) else None
    return Job(outcome.job_id, home=options.home, frame=frame)


def list_jobs(home: str | None = None) -> list[JobStatus]:
    """Every job in the home, newest first."""
    ledger = Ledger(home)
    try:
        return [
            JobStatus(j, ledger.progress(j.id), ledger.shards(j.id)) for j in ledger.list_jobs()
        ]
    finally:
        ledger.close()


def job_status(job_id: str, home: str | None = None) -> JobStatus:
    """One job's counts and batches."""
    ledger = Ledger(home)
    try:
        job = ledger.get_job(job_id)
        return JobStatus(job, ledger.progress(job.id), ledger.shards(job.id))
    finally:
        ledger.close()


def collect_job(
    job_id: str,
    *,
    home: str | None = None,
    output: str | None = None,
    wait: bool = False,
    frame: pd.DataFrame | None = None,
    on_message: Callable[[str], None] | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
    poll_interval: float | None = None,
    write: bool = True,
) -> Outcome:
    """Fetch what the job's batches have finished (all of it with ``wait``); write the table."""
    ledger = Ledger(home)
    try:
        job = ledger.get_job(job_id)
        base = RunOptions(
            home=home,
            output=output,
            on_message=on_message,
            on_progress=on_progress,
            poll_interval=poll_interval,
        )
        options = options_for_job(job, base)
        prepared = reopen(job, options, frame)
        runner = Runner(prepared, ledger)
        if not ledger.progress(job.id).complete:
            ledger.acquire(job.id)
            try:
                runner.begin(job.id)  # the stored budget holds here too
                run_sync(lambda: _collect(runner, wait))
            finally:
                ledger.release(job.id)
        progress = ledger.progress(job.id)
        if progress.complete and job.state == JobState.RUNNING:
            ledger.update_job(job.id, state=JobState.DONE)
        out_frame = runner.write_output() if write else _frame_only(runner)
        out = str(prepared.output) if (write and prepared.output) else None
        return Outcome(job.id, progress, out, frame=out_frame)
    finally:
        ledger.close()


def _frame_only(runner: Runner) -> pd.DataFrame:
    return runner.output_frame()[0]


async def _collect(runner: Runner, wait: bool) -> None:
    opened = open_provider(
        runner.options.provider,
        runner.options.base_url,
        home=runner.ledger.home,
        endpoint=runner.prepared.spec.endpoint,
    )
    try:
        ctx = runner.context()
        engine = batch_engine(runner, opened, ctx)
        if wait:
            if runner.ledger.shards(runner.prepared.job_id, active_only=True):
                # A deadline stored with the job is watched here too: real time takes over
                # what its batches cannot finish in time.
                for note in runner.deadline_notes:
                    ctx.say(note)
                await follow_batches(runner, engine, opened, ctx)
                if runner.stopped:
                    return
                await runner.finish(opened.provider)
            else:
                # Nothing in batches: whatever is left is driven as the job's mode says.
                await runner._drive(runner.ledger.get_job(runner.prepared.job_id), opened)
        else:
            # One pass: adopt, poll, collect what finished, and submit what the queue has room
            # for (a detached job feeds its queue a little more at every collect).
            await engine.run(wait=False)
    finally:
        await opened.close()


def resume_job(
    job_id: str,
    *,
    home: str | None = None,
    on_message: Callable[[str], None] | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
    frame: pd.DataFrame | None = None,
) -> Outcome:
    """Continue a job where it stopped, with its settings and as it last ran (its stored
    rate limits, concurrency, budget...: see :func:`rowprompt.runner.options_for_job`)."""
    ledger = Ledger(home)
    try:
        job = ledger.get_job(job_id)
    finally:
        ledger.close()
    base = RunOptions(home=home, on_message=on_message, on_progress=on_progress)
    options = options_for_job(job, base)
    prepared = reopen(job, options, frame)
    return run_job(prepared.table.frame if job.input_path is None else job.input_path, options)


def cancel_job(
    job_id: str,
    *,
    home: str | None = None,
    frame: pd.DataFrame | None = None,
    on_message: Callable[[str], None] | None = None,
) -> Outcome:
    """Cancel the job's batches, keep what finished, mark the rest skipped."""
    ledger = Ledger(home)
    try:
        job = ledger.get_job(job_id)
        options = options_for_job(
            job, RunOptions(home=home, on_message=on_message, poll_interval=1.0)
        )
        prepared = reopen(job, options, frame)
        runner = Runner(prepared, ledger)

        async def cancel_batches() -> None:
            opened = open_provider(
                options.provider, options.base_url, home=ledger.home, endpoint=job.spec.endpoint
            )
            try:
                engine = batch_engine(runner, opened, runner.context())
                await engine.cancel()
                deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_S
                while await engine.poll_once() and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(1.0)
            finally:
                await opened.close()

        if ledger.shards(job.id, active_only=True):
            run_sync(cancel_batches)
        skipped = ledger.cancel_rows(job.id)
        ledger.update_job(job.id, state=JobState.CANCELLED)
        if on_message:
            on_message(f"job {job.id} cancelled; {skipped} rows skipped")
        out_frame = runner.write_output() if prepared.output else _frame_only(runner)
        return Outcome(
            job.id,
            ledger.progress(job.id),
            str(prepared.output) if prepared.output else None,
            frame=out_frame,
        )
    finally:
        ledger.close()
