"""A job's attempts and rows summed by second, built once and then kept up to date cheaply.

The report builds these once. The live view keeps them between refreshes and reads only what
changed, because a full read costs seconds on a million-row job and the page polls every 2 s:

- attempts are only ever appended (their ``id`` only grows), so a refresh reads the attempts
  logged since the last one, by ``id``, which costs about nothing;
- a row that has ended changes again only through a write that stamps ``updated_at`` with
  the time it was made (an answer repaired; a failed row sent back to pending when the job
  is run again with a higher budget). Rows that ended before a cut-off are summed once. At
  each refresh, the rows by state (an index, no row read) less the ended rows after the
  cut-off must still be the rows summed, or everything is read again: a settled row written
  again has left them. Only the rows that ended after the cut-off, or have not ended, are
  summed again.

Everything is kept by whole second since ``t0`` (the job's first recorded activity). The
charts' buckets are whole numbers of seconds, so a chart's numbers do not depend on whether
they were read once or kept up to date.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rowprompt.answers import AnswerSpec
from rowprompt.jobs import SKIPPED_CODES
from rowprompt.report.data import (
    LATENCY_SAMPLE,
    PARSE_CHECK_LIMIT,
    Counts,
    JobInfo,
    JobSummary,
    _job,
    job_state,
    open_batches,
    state_counts,
)

# A logged attempt that did not answer: an HTTP error, or an answer a check then refused.
_FAILED_ATTEMPT = "(error_message IS NOT NULL OR coalesce(status_code, 0) != 200)"
_ENDED = "state NOT IN ('pending', 'in_flight')"
_KNOWN_VIAS = ("realtime", "batch", "cache")
# Rows that ended this long before a refresh join the rows summed once. A margin, because a
# writer stamps ``updated_at`` a moment before it commits.
CUT_MARGIN_S = 120.0
# How far the cut-off may fall behind before it is moved up (one extra scan when it is).
CUT_STEP_S = 60.0
OK, LIMITED, ERRORS, RETRIES, TOKENS = range(5)


def latency_stride(answered: int) -> int:
    """Every how many answered attempts one latency is drawn: a power of two, so that the
    sample a live view keeps is thinned, never re-drawn, as the job grows."""
    stride = 1
    while answered > stride * LATENCY_SAMPLE:
        stride *= 2
    return stride


@dataclass
class AttemptTally:
    """The job's logged attempts: real-time requests by second, latencies, failures by kind."""

    t0: float
    upto: int = 0
    """Attempts with ``id <= upto`` (of any job) have been read."""
    first: float | None = None
    """When the job's earliest attempt started."""
    seconds: dict[int, list[int]] = field(default_factory=dict)
    """Real-time attempts by second since ``t0``: answered, 429, error, retries, tokens."""
    failed_keys: set[str] = field(default_factory=set)
    """Rows with a failed real-time attempt: the only rows that are ever asked again."""
    answered: int = 0
    latencies: list[tuple[int, float]] = field(default_factory=list)
    """(attempt id, seconds) of the answered attempts whose id is a multiple of
    ``latency_stride(answered)``: a sample spread evenly over the run."""
    failed_kinds: Counter[tuple[int | None, str | None]] = field(default_factory=Counter)
    """Attempts that did not answer (any route), by status code and error code."""

    @classmethod
    def build(cls, db: sqlite3.Connection, job: JobInfo) -> AttemptTally:
        """Read the whole log."""
        upto = int(db.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0])
        first = db.execute(
            "SELECT min(coalesce(started_at, finished_at)) FROM attempts WHERE job_id = ?",
            (job.id,),
        ).fetchone()[0]
        tally = cls(t0=_t0(db, job, first), upto=upto, first=first)
        p = {"job": job.id, "t0": tally.t0, "upto": upto}
        for r in db.execute(
            "SELECT CAST(finished_at - :t0 AS INTEGER), sum(status_code = 200),"
            " sum(status_code = 429), sum(coalesce(status_code, 0) NOT IN (200, 429)),"
            " coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)), 0),"
            " sum(status_code = 200 AND started_at IS NOT NULL)"
            " FROM attempts WHERE job_id = :job AND via = 'realtime' AND id <= :upto"
            " GROUP BY 1",
            p,
        ):
            tally.seconds[int(r[0])] = [int(r[1]), int(r[2]), int(r[3]), 0, int(r[4])]
            tally.answered += int(r[5])
        # Numbering every attempt by row would sort them all (seconds on a million). A row is
        # asked again only after a failed attempt (an answer ends it; a repair is logged as
        # 'repair'), so only the rows with one are read. The recorded ``attempt`` number
        # cannot tell a retry: a request sent again after a 429 keeps its number (a 429 uses
        # up no try), and a row sent back to pending (a rerun with a higher budget) counts
        # from 1 again.
        previous = None
        for key, finished in db.execute(
            "SELECT key, finished_at FROM attempts WHERE job_id = :job AND via = 'realtime'"
            " AND id <= :upto AND key IN (SELECT key FROM attempts WHERE job_id = :job"
            f" AND via = 'realtime' AND id <= :upto AND {_FAILED_ATTEMPT}) ORDER BY key, id",
            p,
        ):
            tally.failed_keys.add(key)
            if key == previous:
                tally.seconds[int(finished - tally.t0)][RETRIES] += 1
            previous = key
        stride = latency_stride(tally.answered)
        tally.latencies = [
            (int(r[0]), float(r[1]))
            for r in db.execute(
                "SELECT id, finished_at - started_at FROM attempts WHERE job_id = :job"
                " AND via = 'realtime' AND started_at IS NOT NULL AND status_code = 200"
                " AND id <= :upto AND id % :stride = 0 ORDER BY id",
                {**p, "stride": stride},
            )
        ]
        for status, code, n in db.execute(
            "SELECT status_code, error_code, count(*) FROM attempts WHERE job_id = :job"
            " AND id <= :upto AND coalesce(status_code, 0) != 200 GROUP BY 1, 2",
            p,
        ):
            tally.failed_kinds[(status, code)] = int(n)
        return tally

    def refresh(self, db: sqlite3.Connection, job: JobInfo) -> AttemptTally:
        """Up to date with the ledger: the attempts logged since, or the whole log again if
        the job's start moved (or the log shrank, as when a job is forgotten)."""
        upto = int(db.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0])
        if upto < self.upto:
            return AttemptTally.build(db, job)
        new = db.execute(
            # ``+job_id``: walk the new ids, not the job's index entries.
            "SELECT id, key, via, started_at, finished_at, status_code, error_code,"
            " error_message IS NOT NULL, prompt_tokens, completion_tokens FROM attempts"
            " WHERE id > ? AND id <= ? AND +job_id = ? ORDER BY id",
            (self.upto, upto, job.id),
        ).fetchall()
        first = self.first
        for r in new:
            start = r[3] if r[3] is not None else r[4]
            first = start if first is None else min(first, start)
        if _t0(db, job, first) != self.t0:
            return AttemptTally.build(db, job)
        self.first, self.upto = first, upto
        stride = latency_stride(self.answered)
        for aid, key, via, started, finished, status, code, has_error, pt, ct in new:
            failed = has_error or status != 200
            if status != 200:
                self.failed_kinds[(status, code)] += 1
            if via != "realtime":
                continue
            second = self.seconds.setdefault(int(finished - self.t0), [0, 0, 0, 0, 0])
            kind = OK if status == 200 else LIMITED if status == 429 else ERRORS
            second[kind] += 1
            second[TOKENS] += (pt or 0) + (ct or 0)
            if key in self.failed_keys:
                second[RETRIES] += 1
            if failed:
                self.failed_keys.add(key)
            if status == 200 and started is not None:
                self.answered += 1
                if aid % stride == 0:
                    self.latencies.append((aid, finished - started))
        thinner = latency_stride(self.answered)
        if thinner != stride:  # a multiple of it: the sample is thinned, never drawn again
            self.latencies = [(i, v) for i, v in self.latencies if i % thinner == 0]
        return self

    def buckets(self, width: int) -> dict[int, list[int]]:
        """Real-time attempts by bucket of ``width`` seconds."""
        result: dict[int, list[int]] = {}
        for second, values in self.seconds.items():
            bucket = result.setdefault(second // width, [0, 0, 0, 0, 0])
            for i, v in enumerate(values):
                bucket[i] += v
        return result


def _t0(db: sqlite3.Connection, job: JobInfo, first_attempt: float | None) -> float:
    """The job's first recorded activity: its first attempt or batch event."""
    first_event = db.execute(
        "SELECT min(at) FROM batch_events WHERE job_id = ?", (job.id,)
    ).fetchone()[0]
    known = [float(t) for t in (first_attempt, first_event) if t is not None]
    return min(known) if known else job.created_at


@dataclass
class RowSums:
    """What a set of rows adds up to."""

    rows: int = 0
    ended: int = 0
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refused: int = 0
    truncated: int = 0
    skipped: int = 0
    by_via: Counter[str] = field(default_factory=Counter)
    other_via: int = 0
    batch: list[float] = field(default_factory=lambda: [0, 0, 0, 0.0])
    """Answered batch rows with usage: count, prompt tokens, completion tokens, cost."""
    cache: list[int] = field(default_factory=lambda: [0, 0, 0])
    """Answered cached rows with usage: count, prompt tokens, completion tokens."""
    cost_seconds: dict[int, list[float]] = field(default_factory=dict)
    """Answered rows by the second they ended: cost, prompt tokens, completion tokens."""

    def add(self, other: RowSums, sign: int = 1) -> None:
        """Add ``other`` in (``sign=-1``: take it out)."""
        self.rows += sign * other.rows
        self.ended += sign * other.ended
        self.cost += sign * other.cost
        self.prompt_tokens += sign * other.prompt_tokens
        self.completion_tokens += sign * other.completion_tokens
        self.refused += sign * other.refused
        self.truncated += sign * other.truncated
        self.skipped += sign * other.skipped
        for via, n in other.by_via.items():
            self.by_via[via] += sign * n
        self.other_via += sign * other.other_via
        self.batch = [a + sign * b for a, b in zip(self.batch, other.batch, strict=True)]
        self.cache = [a + sign * b for a, b in zip(self.cache, other.cache, strict=True)]
        for second, values in other.cost_seconds.items():
            mine = self.cost_seconds.setdefault(second, [0.0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += sign * v


# The two parts rows are read in: those that ended before the cut-off, and all the others.
_SETTLED = f"{_ENDED} AND updated_at < :cut"
_RECENT = "(updated_at >= :cut OR state IN ('pending', 'in_flight'))"
_PRICED = "state = 'done' AND prompt_tokens IS NOT NULL AND completion_tokens IS NOT NULL"
# Each rare case is tested first, so a row that is not one costs a single comparison.
_SUMS = f"""count(*), sum({_ENDED}), total(cost_usd), coalesce(sum(prompt_tokens), 0),
      coalesce(sum(completion_tokens), 0),
      sum(CASE WHEN refusal IS NOT NULL THEN state = 'done' END),
      sum(CASE WHEN finish_reason = 'length' THEN state = 'done' AND refusal IS NULL END),
      sum(CASE WHEN error_code IN {SKIPPED_CODES!r} THEN state = 'failed' END),
      sum(CASE via WHEN 'realtime' THEN {_ENDED} END),
      sum(CASE via WHEN 'batch' THEN {_ENDED} END),
      sum(CASE via WHEN 'cache' THEN {_ENDED} END),
      sum(CASE WHEN via NOT IN {_KNOWN_VIAS!r} THEN {_ENDED} END),
      sum(CASE via WHEN 'batch' THEN {_PRICED} END),
      total(CASE via WHEN 'batch' THEN CASE WHEN {_PRICED} THEN prompt_tokens END END),
      total(CASE via WHEN 'batch' THEN CASE WHEN {_PRICED} THEN completion_tokens END END),
      total(CASE via WHEN 'batch' THEN CASE WHEN {_PRICED} THEN cost_usd END END),
      sum(CASE via WHEN 'cache' THEN {_PRICED} END),
      total(CASE via WHEN 'cache' THEN CASE WHEN {_PRICED} THEN prompt_tokens END END),
      total(CASE via WHEN 'cache' THEN CASE WHEN {_PRICED} THEN completion_tokens END END)"""
# NOT INDEXED: every row of the job is read anyway, and a table scan reads them in page order
# (about twice as fast on a million rows as walking an index and looking each row up).
_SUMS_SQL = f"SELECT {_SUMS} FROM rows NOT INDEXED WHERE job_id = :job AND {{where}}"
# By the second a row last changed, answered rows apart: what the cost chart is drawn from.
# Grouping sorts the rows it groups, so it is read this way only where the chart needs it.
_SUMS_BY_SECOND_SQL = (
    f"SELECT CAST(updated_at - :t0 AS INTEGER), state = 'done', {_SUMS}"
    " FROM rows NOT INDEXED WHERE job_id = :job AND {where} GROUP BY 1, 2"
)


def _sums(db: sqlite3.Connection, job: JobInfo, t0: float, where: str, *, by_second: bool = True,
          **params: float) -> RowSums:  # fmt: skip
    p = {"job": job.id, "t0": t0, **params}
    sums = RowSums()
    if not by_second:
        _add_sums(sums, db.execute(_SUMS_SQL.format(where=where), p).fetchone())
        return sums
    for r in db.execute(_SUMS_BY_SECOND_SQL.format(where=where), p):
        part = _add_sums(sums, r[2:])
        if r[1]:
            sums.cost_seconds[int(r[0])] = [part.cost, part.prompt_tokens, part.completion_tokens]
    return sums


def _add_sums(sums: RowSums, row: Sequence[Any]) -> RowSums:
    r = [v or 0 for v in row]
    part = RowSums(rows=int(r[0]), ended=int(r[1]), cost=float(r[2]), prompt_tokens=int(r[3]),
                   completion_tokens=int(r[4]), refused=int(r[5]), truncated=int(r[6]),
                   skipped=int(r[7]), other_via=int(r[11]))  # fmt: skip
    part.by_via.update({v: int(n) for v, n in zip(_KNOWN_VIAS, r[8:11], strict=True) if n})
    part.batch = [int(r[12]), int(r[13]), int(r[14]), float(r[15])]
    part.cache = [int(r[16]), int(r[17]), int(r[18])]
    sums.add(part)
    return part


@dataclass
class RowTally:
    """The job's rows: statuses, routes, usage, cost, and cost by the second rows ended."""

    t0: float
    cut: float
    """Rows that ended before this are summed in ``settled``."""
    settled: RowSums
    recent: RowSums = field(default_factory=RowSums)
    states: dict[str, int] = field(default_factory=dict)
    """Rows by ``state`` (from an index alone: cheap)."""
    by_second: bool = True
    """Whether the cost by second is kept (the jobs list needs none)."""

    @classmethod
    def build(
        cls,
        db: sqlite3.Connection,
        job: JobInfo,
        t0: float,
        *,
        live: bool,
        by_second: bool = True,
        states: dict[str, int] | None = None,
    ) -> RowTally:
        """Sum every row; ``live`` leaves the last minutes apart, to be read again, and
        ``by_second=False`` leaves out the cost by second (a sort: dear on a million rows).
        ``states``: the rows by state, if the caller has just read them."""
        cut = _cut(t0) if live else float("inf")
        where = "1" if cut == float("inf") else _SETTLED
        settled = _sums(db, job, t0, where, by_second=by_second, cut=cut)
        tally = cls(t0=t0, cut=cut, settled=settled, by_second=by_second)
        tally._read_recent(db, job, states)
        return tally

    def refresh(
        self, db: sqlite3.Connection, job: JobInfo, t0: float, states: dict[str, int] | None = None
    ) -> RowTally:
        """Up to date: the rows ended since the cut-off read again, the others checked."""
        if t0 != self.t0 or self.cut == float("inf"):
            return RowTally.build(db, job, t0, live=True, by_second=self.by_second, states=states)
        self._read_recent(db, job, states)
        # A settled row that changes gets a new ``updated_at``, which moves it out of the
        # settled part (repaired) or out of the ended rows (sent back to pending by a rerun):
        # either way the ended rows left before the cut-off are no longer those summed.
        ended = sum(n for s, n in self.states.items() if s not in ("pending", "in_flight"))
        if ended - self.recent.ended != self.settled.ended:
            return RowTally.build(db, job, t0, live=True, by_second=self.by_second, states=states)
        cut = _cut(t0)
        if cut - self.cut >= CUT_STEP_S:
            moved = _sums(db, job, t0, f"{_SETTLED} AND updated_at >= :old",
                          by_second=self.by_second, old=self.cut, cut=cut)  # fmt: skip
            self.settled.add(moved)
            self.recent.add(moved, -1)
            self.cut = cut
        return self

    def _read_recent(
        self, db: sqlite3.Connection, job: JobInfo, states: dict[str, int] | None
    ) -> None:
        self.states = state_counts(db, job) if states is None else dict(states)
        if self.cut == float("inf"):
            self.recent = RowSums()
        else:
            self.recent = _sums(db, job, self.t0, _RECENT, by_second=self.by_second, cut=self.cut)

    def counts(self, db: sqlite3.Connection, job: JobInfo) -> Counts:
        """Rows by status and route, tokens and cost (answers not re-parsed)."""
        total = RowSums()
        total.add(self.settled)
        total.add(self.recent)
        c = Counts(total=sum(self.states.values()))
        failed = self.states.get("failed", 0)
        done = self.states.get("done", 0)
        statuses = {
            "ok": done - total.refused - total.truncated,
            "refused": total.refused,
            "truncated": total.truncated,
            "failed": failed - total.skipped,
            "skipped": total.skipped,
        }
        statuses.update({s: n for s, n in self.states.items() if s not in ("done", "failed")})
        c.statuses = {s: n for s, n in statuses.items() if n}
        c.by_via = dict(total.by_via)
        if total.other_via:  # a route this version does not know: count them all by name
            c.by_via = {
                str(v): int(n)
                for v, n in db.execute(
                    f"SELECT via, count(*) FROM rows WHERE job_id = ? AND {_ENDED}"
                    " AND via IS NOT NULL GROUP BY via",
                    (job.id,),
                )
            }
        c.prompt_tokens, c.completion_tokens = total.prompt_tokens, total.completion_tokens
        c.cost_usd = total.cost
        if total.batch[0]:
            c.batch_usage = (int(total.batch[1]), int(total.batch[2]), float(total.batch[3]))
        if total.cache[0]:
            c.cache_usage = (int(total.cache[1]), int(total.cache[2]))
        return c

    def cost_buckets(self, width: int) -> dict[int, list[float]]:
        """Answered rows' cost, prompt and completion tokens by bucket of ``width`` seconds."""
        result: dict[int, list[float]] = {}
        for part in (self.settled, self.recent):
            for second, values in part.cost_seconds.items():
                # A row that ended before t0 (its job's first activity) counts at the start.
                bucket = result.setdefault(max(0, second // width), [0.0, 0, 0])
                for i, v in enumerate(values):
                    bucket[i] += v
        return result


def _cut(t0: float) -> float:
    """A whole number of seconds after ``t0``, at least ``CUT_MARGIN_S`` before now."""
    return t0 + max(0, int(time.time() - t0 - CUT_MARGIN_S))


@dataclass
class LiveTallies:
    """What the live view keeps of one job between refreshes."""

    attempts: AttemptTally | None = None
    rows: RowTally | None = None


def counts(
    db: sqlite3.Connection,
    job: JobInfo,
    *,
    check_parse: bool = False,
    tally: RowTally | None = None,
) -> Counts:
    """Rows by status, via, tokens and cost; ``check_parse`` re-reads answers for parse errors."""
    if tally is None:
        tally = RowTally.build(db, job, job.created_at, live=False, by_second=False)
    result = tally.counts(db, job)
    ok = result.statuses.get("ok", 0)
    if check_parse and ok and job.answer_spec != "text" and ok <= PARSE_CHECK_LIMIT:
        bad = _parse_errors(db, job)
        if bad:
            result.statuses["ok"] = ok - bad
            result.statuses["parse_error"] = bad
        result.parse_checked = True
    return result


def _parse_errors(db: sqlite3.Connection, job: JobInfo) -> int:
    try:
        spec = AnswerSpec.from_json(job.answer_spec)
    except Exception:  # a spec from another version: parse errors are simply not counted
        return 0
    bad = 0
    for (answer,) in db.execute(
        "SELECT answer FROM rows WHERE job_id = ? AND state = 'done' AND refusal IS NULL"
        " AND coalesce(finish_reason, '') != 'length'",
        (job.id,),
    ):
        if not spec.parse(answer, structured=job.structured).ok:
            bad += 1
    return bad


def jobs(db: sqlite3.Connection) -> list[JobInfo]:
    """Every job, newest first."""
    return [_job(r) for r in db.execute("SELECT * FROM jobs ORDER BY created_at DESC")]


def list_jobs(db: sqlite3.Connection) -> list[JobSummary]:
    """Every job, newest first, with its counts."""
    return [summarize(db, j) for j in jobs(db)]


def summarize(db: sqlite3.Connection, job: JobInfo, tally: RowTally | None = None) -> JobSummary:
    """One job's counts and state, without re-parsing answers (cheap enough to poll)."""
    c = counts(db, job, tally=tally)
    return JobSummary(job, c, job_state(job, c, open_batches(db, job.id)))
