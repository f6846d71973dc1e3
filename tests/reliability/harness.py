"""The reliability harness: run real jobs in a subprocess, kill them, resume, and count.

Each trial returns a :class:`Trial` with the figures ``docs/reliability.md`` publishes: rows
lost, rows duplicated in the output, requests paid twice (and how many of those the kill
allowed), and errors without a clear message. The short campaigns in ``tests/reliability``
and the long ones in ``bench/soak.py`` both call it; every wait here is bounded.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.model import expected_answer
from tests.helpers import RP, fast_config

PROMPT = "Summarise: {{ text }}"
MODEL = "gpt-4o-mini"
CANARY = "sk-canary-7f3a9c1e5b2d4f60a8e6c4b2d0f9e7a5"
RUN_TIMEOUT = 120.0

# Protocol points the sandbox can kill the client at: (event, endpoint). "response" fires once
# the server has acted (the file stored, the batch created) but before the answer leaves.
HOOK_POINTS: tuple[tuple[str, str], ...] = (
    ("request", "POST /v1/files"),
    ("response", "POST /v1/files"),
    ("request", "POST /v1/batches"),
    ("response", "POST /v1/batches"),
    ("response", "GET /v1/batches/{batch_id}"),
    ("request", "GET /v1/files/{file_id}/content"),
    ("response", "GET /v1/files/{file_id}/content"),
    ("response", "POST /v1/chat/completions"),
)
# Points inside rowprompt itself (ROWPROMPT_TEST_CRASH_AT).
CRASH_POINTS = ("output_before_replace",)
# A kill while results are being joined back with some batches' outcomes already written and
# others not: the second result download, of a job split in shards by a small queue limit.
COLLECT_KILL = "hook:response:GET /v1/files/{file_id}/content#2"
COLLECT_ARGS = ("--batch-token-limit", "2000")
REALTIME_ENDPOINTS = ("POST /v1/chat/completions", "POST /v1/responses")


def kill_points(mode: str) -> list[str]:
    """Every kill point a job in ``mode`` reaches: protocol hooks, then rowprompt's own."""
    hooks = [
        f"hook:{event}:{endpoint}"
        for event, endpoint in HOOK_POINTS
        if (mode == "realtime") == (endpoint in REALTIME_ENDPOINTS) or mode == "hybrid"
    ]
    collect = [COLLECT_KILL] if mode != "realtime" else []
    return hooks + collect + [f"crash:{point}" for point in CRASH_POINTS]


def crash_plan(
    trials: int, modes: Sequence[str] = ("realtime", "batch", "hybrid")
) -> list[tuple[str, str | None]]:
    """(mode, kill) for ``trials`` crash trials: every kill point of every mode once, in
    turn across modes, then seeded random kills (None) in rotation. Coverage is planned,
    not left to the seed; fewer trials than points cover a prefix of them."""
    fixed = [[(mode, kill) for kill in kill_points(mode)] for mode in modes]
    plan: list[tuple[str, str | None]] = []
    for i in range(max(len(points) for points in fixed)):
        plan += [points[i] for points in fixed if i < len(points)]
    plan = plan[:trials]
    plan += [(modes[i % len(modes)], None) for i in range(trials - len(plan))]
    return plan


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child rowprompt: no real key or base URL, no crash point."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ROWPROMPT_HOME")
        and not k.startswith("ROWPROMPT_TEST_")
    }
    env.update(extra)
    return env


def make_table(path: Path, n: int) -> Path:
    """A CSV of ``n`` rows: ``id`` a0.. and ``text`` "row i"."""
    pd.DataFrame(
        {"id": [f"a{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    ).to_csv(path, index=False)
    return path


def expected_answers(n: int, seed: int = 0) -> list[str | None]:
    """What the sandbox answers each row of :func:`make_table`, computed without it."""
    return [
        expected_answer(
            {"model": MODEL, "messages": [{"role": "user", "content": f"Summarise: row {i}"}]},
            seed,
        )
        for i in range(n)
    ]


def row_of_message(message: str) -> int | None:
    """The row position a "Summarise: row i" message came from."""
    prefix = "Summarise: row "
    if message.startswith(prefix) and message[len(prefix) :].isdigit():
        return int(message[len(prefix) :])
    return None


def row_of_custom_id(custom_id: str) -> int | None:
    """The row position of a batch ``custom_id`` (``JOB-POSITION``)."""
    tail = custom_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def ledger_query(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the ledger; [] when it does not exist yet."""
    path = home / "rowprompt.db"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return [tuple(r) for r in db.execute(sql, args).fetchall()]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return []


def ledger_phase(home: Path) -> str:
    """Where a killed job stood, read from its ledger: the kill's coverage."""
    if not ledger_query(home, "SELECT id FROM jobs"):
        return "before the job was written"
    shards = dict(ledger_query(home, "SELECT state, count(*) FROM shards GROUP BY state"))
    rows = dict(ledger_query(home, "SELECT state, count(*) FROM rows GROUP BY state"))
    total = sum(rows.values())
    if rows.get("done", 0) + rows.get("failed", 0) == total:
        return "all rows settled (writing output)"
    if shards:
        return "batch: " + ",".join(f"{k}={v}" for k, v in sorted(shards.items()))
    if rows.get("done", 0) + rows.get("in_flight", 0) == 0:
        return "job written, nothing sent yet"
    return f"realtime: {rows.get('done', 0)}/{total} done, {rows.get('in_flight', 0)} in flight"


def in_flight_realtime(home: Path) -> set[int]:
    """Positions of rows claimed for real time and not settled (asked, answer not kept)."""
    got = ledger_query(
        home, "SELECT position FROM rows WHERE state = 'in_flight' AND via = 'realtime'"
    )
    return {int(r[0]) for r in got}


@dataclass
class Output:
    """What an output file holds, checked against the input."""

    exists: bool
    complete: bool  # parses, every input id once, in order
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0  # rows whose answer is not the one the sandbox gives that row
    not_ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    reasonless_failures: int = 0  # failed rows with no _error


def check_output(path: Path, n: int, answers: list[str | None] | None = None) -> Output:
    """Read an output table and compare it with the n-row input."""
    if not path.exists():
        return Output(exists=False, complete=False, lost=n)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception:
        return Output(exists=True, complete=False, lost=n)
    ids = list(frame.get("id", []))
    want = [f"a{i}" for i in range(n)]
    counts = Counter(ids)
    lost = sum(1 for i in want if counts[i] == 0)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    statuses = Counter(frame.get("_status", []))
    wrong = 0
    if answers is not None and "response" in frame:
        for i, (rid, status, response) in enumerate(
            zip(ids, frame["_status"], frame["response"], strict=True)
        ):
            if status == "ok" and (rid != f"a{i}" or response != (answers[i] or "")):
                wrong += 1
    reasonless = 0
    if "_error" in frame:
        reasonless = int(((frame["_status"] == "failed") & (frame["_error"] == "")).sum())
    return Output(
        exists=True,
        complete=ids == want,
        lost=lost,
        duplicated=duplicated,
        wrong=wrong,
        not_ok=sum(v for k, v in statuses.items() if k != "ok"),
        statuses=dict(statuses),
        reasonless_failures=reasonless,
    )


@dataclass
class Trial:
    """One crash (or fault) trial and its figures."""

    campaign: str
    mode: str
    seed: int
    rows: int
    kill: str = ""
    phase: str = ""
    output_at_kill: str = "absent"  # absent / complete / HALF-WRITTEN
    killed: bool = False  # the kill happened (a job can end before its kill point)
    lost: int = 0  # missing from the output, or there but never settled (`pending`)
    duplicated: int = 0
    wrong: int = 0
    not_ok: int = 0  # rows not `ok`: with no fault injected, every one is a failure
    paid_twice: int = 0
    paid_twice_allowed: int = 0  # of those, rows in flight at the kill
    batches_billed_twice: int = 0
    unclear_errors: int = 0
    resumed_rc: int = 0
    faults_served: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No row lost, duplicated or wrong; nothing paid twice beyond what was in flight;
        in a crash trial (no faults), every row ``ok``."""
        return (
            self.lost == 0
            and (self.campaign != "crash" or self.not_ok == 0)
            and self.duplicated == 0
            and self.wrong == 0
            and self.paid_twice <= self.paid_twice_allowed
            and self.batches_billed_twice == 0
            and self.unclear_errors == 0
            and self.output_at_kill != "HALF-WRITTEN"
            and self.resumed_rc == 0
        )


def record_final(trial: Trial, final: Output) -> None:
    """Put the figures of the job's final output into ``trial``. A row still ``pending``
    never settled: it counts as lost, whatever the exit code said."""
    trial.lost = final.lost + final.statuses.get("pending", 0)
    trial.duplicated, trial.wrong, trial.not_ok = final.duplicated, final.wrong, final.not_ok
    trial.unclear_errors += final.reasonless_failures
    if final.not_ok:
        trial.notes.append(f"statuses {final.statuses}")


def paid_per_row(sb: Sandbox, n: int) -> tuple[Counter[int], Counter[int]]:
    """(real-time 200 answers, batch 200 lines) per row position."""
    realtime: Counter[int] = Counter()
    for request in sb.requests():
        row = row_of_message(request["last_user_message"])
        if row is not None and request["status"] == 200:
            realtime[row] += 1
    batch: Counter[int] = Counter()
    for custom_id, times in sb.batch_lines().items():
        row = row_of_custom_id(custom_id)
        if row is not None and row < n:
            batch[row] += times
    return realtime, batch


def job_args(
    src: Path,
    home: Path,
    out: Path,
    base_url: str,
    mode: str,
    concurrency: int = 4,
    extra: Sequence[str] = (),
) -> list[str]:
    """A ``rowprompt run`` command line against a sandbox."""
    return [
        "run",
        str(src),
        "--prompt",
        PROMPT,
        "--provider",
        "sandbox",
        "--base-url",
        base_url,
        "--mode",
        mode,
        "--home",
        str(home),
        "--output",
        str(out),
        "--yes",
        "--quiet",
        "--no-report",
        "--poll-interval",
        "0.2",
        "--concurrency",
        str(concurrency),
        "--preview",
        "8",
        *extra,
    ]


def is_clear_error(stderr: str) -> bool:
    """One line starting "Error: ", no traceback, not an "unexpected" bug report."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (
        "Traceback" not in stderr
        and len(lines) == 1
        and lines[0].startswith("Error: ")
        and "unexpected" not in lines[0]
    )


def crash_trial(
    mode: str,
    seed: int,
    workdir: Path,
    *,
    n: int = 40,
    kill: str | None = None,
    resume_with: str | None = None,
    extra_args: Sequence[str] = (),
) -> Trial:
    """Run a job, SIGKILL it at a seeded moment (or at ``kill``), resume it, check everything.

    ``extra_args`` go on the command line (``--endpoint responses``, say). ``kill``:
    ``"t=SECONDS"``, ``"hook:EVENT:ENDPOINT"`` (the sandbox kills the client there; with
    ``#N``, at its Nth such request), ``"crash:POINT"`` (rowprompt kills itself there), or
    None for a seeded choice.
    """
    rng = random.Random(seed)
    concurrency = 4
    workdir.mkdir(parents=True, exist_ok=True)
    src = make_table(workdir / "in.csv", n)
    home, out = workdir / "home", workdir / "out.csv"
    if kill is None:
        choice = rng.random()
        if choice < 0.5:
            kill = f"t={rng.uniform(1.6, 3.6):.2f}"
        elif choice < 0.85 or mode == "realtime":
            event, endpoint = rng.choice(HOOK_POINTS)
            if mode == "realtime":
                event, endpoint = "response", "POST /v1/chat/completions"
            kill = f"hook:{event}:{endpoint}"
        else:
            kill = f"crash:{rng.choice(CRASH_POINTS)}"
    trial = Trial("crash", mode, seed, n, kill=kill)
    if kill == COLLECT_KILL:
        extra_args = (*extra_args, *COLLECT_ARGS)
    # Slow enough that a random moment lands inside the job, not after it.
    config = fast_config(
        seed=0,
        latency_ms=60.0,
        latency_jitter_ms=20.0,
        batch_rows_per_second=25.0,
        batch_validating_seconds=0.3,
        batch_finalizing_seconds=0.3,
    )
    with Sandbox(config) as sb:
        args = job_args(src, home, out, sb.base_url, mode, concurrency, extra_args)
        env = clean_env()
        if kill.startswith("crash:"):
            env["ROWPROMPT_TEST_CRASH_AT"] = kill.split(":", 1)[1]
        proc = subprocess.Popen(
            [RP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
        )
        killed = threading.Event()
        if kill.startswith("hook:"):
            _, event, endpoint = kill.split(":", 2)
            endpoint, _, count = endpoint.partition("#")
            nth = int(count or 1)
            if not count and endpoint in REALTIME_ENDPOINTS:
                nth = 1 + rng.randrange(3)
            seen = [0]

            def hook(ev: str, ep: str) -> None:
                if ev == event and ep == endpoint and not killed.is_set():
                    seen[0] += 1
                    if seen[0] >= nth:
                        killed.set()
                        proc.send_signal(signal.SIGKILL)

            sb.on_request(hook)
        try:
            if kill.startswith("t="):
                try:
                    proc.wait(timeout=float(kill[2:]))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    killed.set()
            _, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sb.on_request(None)
        if kill.startswith("crash:") and proc.returncode == -signal.SIGKILL:
            killed.set()
        trial.killed = killed.is_set()
        if not killed.is_set():
            trial.notes.append(f"the job ended (rc {proc.returncode}) before the kill")
            if proc.returncode != 0:
                trial.unclear_errors += 0 if is_clear_error(err) else 1
                trial.notes.append(err.strip()[-300:])
        trial.phase = ledger_phase(home)
        allowed = in_flight_realtime(home)
        if out.exists():
            at_kill = check_output(out, n)
            trial.output_at_kill = "complete" if at_kill.complete else "HALF-WRITTEN"
        # Resume: the same command again, or `rowprompt resume JOB`.
        resume_with = resume_with or rng.choice(["rerun", "resume"])
        jobs = ledger_query(home, "SELECT id FROM jobs")
        if resume_with == "resume" and jobs:
            again = [RP, "resume", str(jobs[0][0]), "--home", str(home), "--quiet"]
        else:
            again = [RP, *args]
        result = subprocess.run(
            again, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=clean_env(), check=False
        )
        trial.kill += f" → {resume_with}"
        trial.resumed_rc = result.returncode
        if result.returncode != 0:
            trial.unclear_errors += 0 if is_clear_error(result.stderr) else 1
            trial.notes.append(result.stderr.strip()[-300:])
        record_final(trial, check_output(out, n, expected_answers(n)))
        realtime, batch = paid_per_row(sb, n)
        twice = {r for r in range(n) if realtime[r] + batch[r] > 1}
        trial.paid_twice = len(twice)
        trial.paid_twice_allowed = len(twice & allowed)
        trial.batches_billed_twice = int(sb.stats().get("batch_custom_ids_billed_twice", 0))
        if twice - allowed:
            trial.notes.append(
                f"rows paid twice that were not in flight: {sorted(twice - allowed)[:10]}"
            )
    return trial


def run_bounded(trials: list[Callable[[], Trial]], budget_s: float) -> tuple[list[Trial], int]:
    """Run trials one after another until done or ``budget_s`` is spent; (done, skipped)."""
    started = time.monotonic()
    done: list[Trial] = []
    for make in trials:
        if time.monotonic() - started > budget_s:
            break
        done.append(make())
    return done, len(trials) - len(done)
