"""A sample of answers beside their inputs.

The ledger holds answers, not inputs. The inputs come from the job's input file when it is
still there unchanged (its hash is in the job spec); for a DataFrame job, or a file since
changed, the prompt a batch row was sent is read back from the shard's JSONL instead.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rowprompt import tables
from rowprompt.answers import AnswerSpec
from rowprompt.report.data import JobInfo, row_label

SAMPLE_ROWS = 8
MAX_INPUT_BYTES = 200 * 1024 * 1024  # larger input files are not read just for a sample
MAX_COLUMNS = 4
MAX_CELL = 300


@dataclass(frozen=True)
class SampleRow:
    """One finished row: its inputs (or the prompt sent) and its answer."""

    position: int
    key: str
    label: str
    """The row as the CLI names it: its number from 1, or its id with an id column."""
    status: str
    via: str | None
    answer: str
    inputs: dict[str, str] = field(default_factory=dict)
    prompt: str | None = None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def sample_rows(
    db: sqlite3.Connection, job: JobInfo, *, read_inputs: bool = True
) -> list[SampleRow]:
    """A few finished rows spread over the job (deterministic), in input order."""
    # A multiplicative hash of the position spreads the picks over the whole table, and the
    # same job always shows the same rows.
    # The picks from the index alone (it holds state and position), then those few rows: on a
    # million answered rows, reading each one's answer only to rank it was most of the cost.
    picked = [
        int(r[0])
        for r in db.execute(
            "SELECT position FROM rows WHERE job_id = ? AND state = 'done'"
            " ORDER BY (position * 7919) % 10007, position LIMIT ?",
            (job.id, SAMPLE_ROWS),
        )
    ]
    rows = [
        r
        for position in sorted(picked)
        for r in db.execute(
            "SELECT position, key, state, via, answer, error_code, error_message, shard FROM rows"
            " WHERE job_id = ? AND position = ?",
            (job.id, position),
        )
    ]
    shown = _answer_reader(job)
    inputs = _inputs(job, [r["key"] for r in rows]) if read_inputs and rows else {}
    prompts: dict[int, str] = {}
    if read_inputs and rows and not inputs:
        prompts = _batch_prompts(db, job, [(r["position"], r["shard"]) for r in rows])
    return [
        SampleRow(
            position=r["position"],
            key=r["key"],
            label=row_label(job, r["position"], r["key"]),
            status=r["state"],
            via=r["via"],
            answer=_clip(shown(r["answer"])),
            inputs=inputs.get(r["key"], {}),
            prompt=prompts.get(r["position"]),
        )
        for r in rows
    ]


def _answer_reader(job: JobInfo) -> Callable[[str | None], str]:
    """Shows an answer as the output table would hold it: parsed, not the raw JSON envelope."""
    try:
        spec = AnswerSpec.from_json(job.answer_spec)
    except Exception:  # a spec this version cannot read: show the raw text
        return lambda text: text or ""

    def read(text: str | None) -> str:
        parsed = spec.parse(text, structured=job.structured)
        if not parsed.ok:
            return f"(does not parse: {parsed.error}) {text or ''}"
        values = parsed.values
        if list(values) == ["response"]:
            return tables.display_text(values["response"])
        return json.dumps(values, ensure_ascii=False, default=str)

    return read


def _inputs(job: JobInfo, keys: list[str]) -> dict[str, dict[str, str]]:
    path = Path(job.input_path) if job.input_path else None
    try:
        if path is None or not path.is_file() or path.stat().st_size > MAX_INPUT_BYTES:
            return {}
        stat = path.stat()
        table = _read_input(str(path), stat.st_mtime_ns, stat.st_size, job.sheet,
                            job.id_column, job.limit)  # fmt: skip
    except Exception:  # a moved, changed or unreadable input: the sample shows answers only
        return {}
    if table.content_hash != job.input_hash:
        return {}
    wanted = set(keys)
    columns = table.columns[:MAX_COLUMNS]
    result: dict[str, dict[str, str]] = {}
    for index, key in enumerate(table.keys):
        if key in wanted:
            row = table.frame.iloc[index]
            result[key] = {c: _clip(tables.display_text(row[c])) for c in columns}
    return result


@functools.lru_cache(maxsize=2)
def _read_input(
    path: str, mtime_ns: int, size: int, sheet: str | None, id_column: str | None, limit: int | None
) -> tables.Table:
    # Keyed on mtime and size too: the live view re-reads a file only when it changed.
    del mtime_ns, size
    return tables.read_table(path, sheet=sheet, id_column=id_column, limit=limit)


def _batch_prompts(
    db: sqlite3.Connection, job: JobInfo, rows: list[tuple[int, int | None]]
) -> dict[int, str]:
    wanted: dict[int, set[str]] = {}
    for position, shard in rows:
        if shard is not None:
            wanted.setdefault(shard, set()).add(f"{job.id}-{position}")
    found: dict[int, str] = {}
    for shard, ids in wanted.items():
        r = db.execute(
            "SELECT path FROM shards WHERE job_id = ? AND number = ?", (job.id, shard)
        ).fetchone()
        if r is None or not r[0]:
            continue
        found.update(_prompts_in(Path(r[0]), ids))
    return found


def _prompts_in(path: Path, ids: set[str]) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not any(i in line for i in ids):
                    continue  # cheap test first: most lines are not sampled
                item = json.loads(line)
                if item.get("custom_id") in ids:
                    messages = item.get("body", {}).get("messages", [])
                    users = [m.get("content") for m in messages if m.get("role") == "user"]
                    if users and isinstance(users[-1], str):
                        position = int(str(item["custom_id"]).rsplit("-", 1)[1])
                        found[position] = _clip(users[-1])
    except (OSError, ValueError, KeyError, AttributeError):
        return found
    return found
