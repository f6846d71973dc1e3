"""One job from a table to a table: the library both the CLI and the Python API call.

``prepare`` does everything that can fail on the user's side (read the table, check the
template against its columns, check the provider's configuration, render every row) before
anything is written to the ledger or sent; ``Runner`` then drives the job with the engines.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from rowprompt import costs, tables
from rowprompt.answers import AnswerSpec
from rowprompt.config import load_settings
from rowprompt.drive import drive_job, plan_job
from rowprompt.embedding_jobs import (
    check_embedding_inputs,
    embedding_body,
    embedding_grouping,
    embedding_params,
    skipped_outcomes,
)
from rowprompt.engine.budget import OVER_BUDGET, Budget, output_cap, output_cap_message
from rowprompt.engine.context import DEFAULT_OUTPUT_ESTIMATE, RunContext
from rowprompt.engine.planner import (
    Plan,
    batch_history,
    drops_deadline,
    human_duration,
    parse_deadline,
)
from rowprompt.engine.repair import repair_rows
from rowprompt.errors import ConfigError, InputError, OutputError, UsageError
from rowprompt.estimator import Estimate, estimate_job
from rowprompt.images import ImageInputs, limits_for
from rowprompt.jobs import Completion, JobProgress, JobSpec, JobState, request_hash
from rowprompt.ledger import JobRecord, Ledger
from rowprompt.output import (
    EMBEDDING_COLUMN,
    UNTRUSTED_COLUMNS,
    build_embedding_output,
    build_output,
    check_column_clash,
    write_embedding_output,
)
from rowprompt.providers import (
    OpenedProvider,
    check_provider_config,
    open_provider,
    resolve_provider,
)
from rowprompt.providers.base import Provider
from rowprompt.providers.openai_responses import endpoint_for
from rowprompt.templates import PromptTemplate

MODES = ("realtime", "batch", "hybrid", "auto")
DEFAULT_MODEL = "gpt-4o-mini"

T = TypeVar("T")


@dataclass
class RunOptions:
    """The options of ``rowprompt run`` (and of :func:`rowprompt.run`)."""

    prompt: str | None = None
    prompt_file: str | None = None
    system: str | None = None
    system_file: str | None = None
    model: str = DEFAULT_MODEL
    provider: str = "openai"
    base_url: str | None = None
    mode: str = "auto"
    output: str | None = None
    output_type: str = "text"
    schema: Any = None
    repair: int = 1
    raw_cells: bool = False
    structured: bool | None = None
    write_output: bool = True
    budget: float | None = None
    deadline: str | None = None
    preview: int = 20
    batch_token_limit: int | None = None
    fallback: str | None = None
    on_stats: Callable[[Any], None] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    id_column: str | None = None
    limit: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    detach: bool = False
    no_cache: bool = False
    max_attempts: int = 6
    sheet: str | None = None
    endpoint: str | None = None  # None: chat, or what the model needs
    image_columns: list[str] = field(default_factory=list)
    # Embeddings jobs (`rowprompt embed`): the vector size, blank rows skipped, rows a request.
    dimensions: int | None = None
    skip_empty: bool = False
    inputs_per_request: int | None = None
    home: str | None = None
    force: bool = False
    poll_interval: float | None = None
    request_timeout: float = 120.0
    sandbox_rules: str | None = None
    on_progress: Callable[[JobProgress], None] | None = None
    on_message: Callable[[str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RUN_SETTINGS: tuple[str, ...] = (
    "rpm",
    "tpm",
    "concurrency",
    "max_attempts",
    "budget",
    "repair",
    "raw_cells",
    "no_cache",
    "structured",
    "preview",
    "batch_token_limit",
    "fallback",
    "poll_interval",
    "request_timeout",
    "inputs_per_request",
    "sandbox_rules",
)
"""The :class:`RunOptions` fields that are not part of a job's identity but change how it runs.

They are stored with the job when a run starts (``JobRecord.run_settings``) so that ``resume``
and ``collect --wait`` run it as it last ran (see :func:`options_for_job`). Plain values only:
never a secret, never a callable. The deadline is kept apart (``Ledger.job_deadline``).
"""

_WINDOW_ROWS = 4096
_WINDOWS_KEPT = 8


@dataclass
class Prepared:
    """A job checked and ready: its table, template, spec and request builder."""

    table: tables.Table
    template: PromptTemplate
    spec: JobSpec
    options: RunOptions
    output: Path | None
    answer: AnswerSpec = field(default_factory=AnswerSpec)
    structured: bool = True
    skipped: tuple[int, ...] = ()
    """Embeddings: positions of rows with no text, skipped (``--skip-empty``)."""
    images: ImageInputs | None = None
    """The job's image inputs (``--image-column``, ``| image``); None without any."""
    budget_cap: int | None = None
    """The maximum output every request carries because of ``--budget`` (no ``--max-tokens``)."""

    @property
    def job_id(self) -> str:
        """The job's identity."""
        return self.spec.job_id()

    @functools.cached_property
    def _windows(self) -> OrderedDict[int, list[list[Any]]]:
        return OrderedDict()

    def _window(self, start: int) -> list[list[Any]]:
        # Plain lists per column for a window of rows: rendering a row is then a few list
        # lookups, not a pandas row access (tens of microseconds a row). Windows, not whole
        # columns: whole columns copied every string-backed cell of the table (about 400 bytes
        # a row); a few windows kept cover the engines' mostly in-order reads and retries.
        windows = self._windows
        columns = windows.get(start)
        if columns is None:
            part = self.table.frame.iloc[start : start + _WINDOW_ROWS]
            columns = [
                tables.column_values(part.iloc[:, i]) for i in range(len(self.table.columns))
            ]
            windows[start] = columns
            if len(windows) > _WINDOWS_KEPT:
                windows.popitem(last=False)
        else:
            windows.move_to_end(start)
        return columns

    def row_values(self, position: int) -> dict[str, Any]:
        """The row at ``position`` as ``{column: value}``."""
        offset = position % _WINDOW_ROWS
        columns = self._window(position - offset)
        names = self.table.columns
        return {name: column[offset] for name, column in zip(names, columns, strict=True)}

    def build_body(self, position: int) -> dict[str, Any]:
        """The chat request body for the row at ``position``."""
        if self.spec.endpoint == "embeddings":
            return embedding_body(self.spec, self.embed_text(position))
        values, key = self.row_values(position), self.table.label(position)
        messages = self.template.render(values, key=key, source=self.table.source)
        if self.images is not None:
            messages = self.images.attach(messages, values, key)
        instruction = self.answer.instruction()
        if instruction and (not self.structured or self.answer.kind == "json"):
            messages = with_instruction(messages, instruction)
        return request_body(self.spec, messages)

    def embed_text(self, position: int) -> str:
        """The text the row at ``position`` embeds (an embeddings job's rendered template)."""
        messages = self.template.render(
            self.row_values(position), key=self.table.label(position), source=self.table.source
        )
        return str(messages[-1]["content"])


def request_body(spec: JobSpec, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat-completions body for these messages under the job's parameters."""
    body: dict[str, Any] = {"model": spec.model, "messages": messages}
    body.update(spec.params)
    return body


def supports_structured_output(provider: str, base_url: str | None) -> bool:
    """Whether to ask for ``response_format`` structured output or instruct and parse.

    OpenAI's own API and the sandbox have it; OpenAI-compatible servers vary (llama.cpp
    answers a ``json_schema`` with a 500), so there we instruct and parse.
    """
    structured = ("sandbox", "anthropic", "azure", "gemini")
    return provider in structured or (provider == "openai" and not base_url)


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """The messages with the answer-format instruction added to the system prompt."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{instruction}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def _params(
    options: RunOptions, answer: AnswerSpec, structured: bool, cap: int | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    response_format = answer.response_format() if structured else None
    if response_format is not None:
        params["response_format"] = response_format
    if options.max_tokens is not None and options.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    max_tokens = options.max_tokens if options.max_tokens is not None else cap
    if max_tokens is not None:
        # OpenAI's own API wants max_completion_tokens (max_tokens is refused by newer
        # models); OpenAI-compatible servers mostly know only max_tokens.
        name = "max_tokens" if options.base_url and options.provider == "openai" else None
        params[name or "max_completion_tokens"] = max_tokens
    if options.temperature is not None:
        if not 0 <= options.temperature <= 2:
            raise UsageError("--temperature must be between 0 and 2")
        params["temperature"] = options.temperature
    return params


def prepare(source: str | os.PathLike[str] | pd.DataFrame, options: RunOptions) -> Prepared:
    """Check everything on the user's side; nothing is written or sent."""
    if options.mode not in MODES:
        raise UsageError(f"unknown mode {options.mode!r}", hint=f"use one of: {', '.join(MODES)}")
    options.provider, options.model = resolve_provider(options.provider, options.model)
    if options.provider == "openai" and not options.base_url:
        # A server named by OPENAI_BASE_URL is a compatible server as much as one named by
        # --base-url: it decides max_tokens vs max_completion_tokens, structured output, the
        # job's identity and where a resume goes.
        options.base_url = os.environ.get("OPENAI_BASE_URL") or None
    answer = (
        AnswerSpec.from_json(options.output_type)
        if options.output_type.startswith("{")
        else AnswerSpec.from_options(options.output_type, options.schema)
    )
    structured = (
        options.structured
        if options.structured is not None
        else supports_structured_output(options.provider, options.base_url)
    )
    if options.limit is not None and options.limit < 1:
        raise UsageError("--limit must be at least 1")
    if options.budget is not None and options.budget < 0:
        raise UsageError("--budget must be a number of USD >= 0")
    load_settings()
    if options.deadline and not drops_deadline(options.deadline):
        parse_deadline(options.deadline)
    if options.preview < 0:
        raise UsageError("--preview must be 0 or more")
    template = PromptTemplate.from_options(
        prompt=options.prompt,
        prompt_file=options.prompt_file,
        system=options.system,
        system_file=options.system_file,
    )
    table = tables.read_table(
        source, sheet=options.sheet, id_column=options.id_column, limit=options.limit
    )
    columns = [str(c) for c in table.frame.columns]
    template.check_columns(columns, source=table.source)
    images = _image_inputs(source, options, template, columns)
    embedding = options.endpoint == "embeddings"
    check_column_clash(columns, table.source, [EMBEDDING_COLUMN] if embedding else answer.columns())
    check_provider_config(options.provider, options.base_url, options.model)
    if options.budget is not None:
        # A cap that cannot price a request cannot hold it back: refuse before anything is sent.
        costs.require_price(options.model, _priced_as(options.provider))
    output = _output_path(source, options)
    if options.detach and options.provider == "sandbox" and not options.base_url:
        raise UsageError(
            "--detach needs a provider that outlives this process; the in-process sandbox does not",
            hint="start `rowprompt sandbox --port 8787` and pass --base-url http://127.0.0.1:8787/v1",
        )
    # The cap is part of the job's identity (its params), like --max-tokens: it changes what
    # is asked, so the cache and the request hashes must tell a capped answer from a free one
    # (a later run without --budget asks again rather than reuse a possibly cut answer). The
    # budget itself is not: the cap is the same for every budget, so the same table run again
    # with a bigger --budget finds the same job and its answers.
    cap = None if embedding else output_cap(options.budget, options.max_tokens, options.endpoint)
    params = embedding_params(options) if embedding else _params(options, answer, structured, cap)
    spec = JobSpec(
        input_hash=table.content_hash,
        prompt=template.prompt,
        system=template.system,
        model=options.model,
        provider=options.provider,
        base_url=options.base_url,
        params=params,
        answer_spec=answer.to_json(),
        mode=options.mode,
        id_column=options.id_column,
        sheet=options.sheet,
        limit=options.limit,
        endpoint=endpoint_for(
            options.endpoint, options.model, options.provider, options.max_tokens
        ),
        image_columns=tuple(options.image_columns),
    )
    prepared = Prepared(table, template, spec, options, output, answer, structured, images=images)
    prepared.budget_cap = cap
    if images is not None:
        _check_images(prepared, images)
    if embedding:
        prepared.skipped = check_embedding_inputs(prepared)
    return prepared


def _priced_as(provider: str) -> str:
    """The provider whose prices apply (the sandbox stands in for OpenAI)."""
    return "openai" if provider == "sandbox" else provider


def _image_inputs(
    source: Any, options: RunOptions, template: PromptTemplate, columns: list[str]
) -> ImageInputs | None:
    """The job's image inputs, their columns checked; None when it has none."""
    wanted = options.image_columns
    options.image_columns = [wanted] if isinstance(wanted, str) else list(wanted or [])
    for name in options.image_columns:
        if name not in columns:
            raise InputError(
                f"--image-column {name!r}: the table has no such column",
                hint=f"The columns are: {', '.join(map(repr, columns[:30]))}.",
            )
    if not options.image_columns and not template.uses_images:
        return None
    # Relative paths start at the input file's folder (a DataFrame's: the current one).
    base = Path.cwd() if isinstance(source, pd.DataFrame) else Path(source).resolve().parent
    return ImageInputs(tuple(options.image_columns), base, limits_for(options.provider))


def _check_images(p: Prepared, images: ImageInputs) -> None:
    """Every row's images checked (a stat and a header read each) before anything is sent."""
    names = p.table.columns
    static, dynamic = p.template.image_filter_columns()
    wanted = [*images.columns, *([] if dynamic else static)]
    frame = p.table.frame
    columns = [(name, tables.column_values(frame.iloc[:, names.index(name)])) for name in wanted]
    render = None
    if dynamic:

        def render(position: int) -> list[dict[str, Any]]:
            return p.template.render(
                p.row_values(position), key=p.table.label(position), source=p.table.source
            )

    images.check_table(p.table.labels, columns, render)


def _output_path(source: Any, options: RunOptions) -> Path | None:
    if options.output:
        input_path = None if isinstance(source, pd.DataFrame) else str(source)
        return tables.check_output_path(options.output, input_path=input_path)
    if isinstance(source, pd.DataFrame):
        return None
    path = Path(source)
    infix = "embedded" if options.endpoint == "embeddings" else "answers"
    return path.with_name(f"{path.stem}.{infix}{path.suffix.lower()}")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end from synchronous code, also inside Jupyter's running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    # A loop already runs in this thread (Jupyter): run ours in a thread of its own.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="rowprompt-run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Runner:
    """Drives one prepared job through the ledger and the engines."""

    def __init__(self, prepared: Prepared, ledger: Ledger | None = None) -> None:
        self.prepared = prepared
        self.options = prepared.options
        self.ledger = ledger or Ledger(self.options.home)
        self.budget: Budget | None = None
        self.stopped = False
        # What the real-time engine learned of the provider's limits (rpm, tpm), for the
        # deadline fallback when the user gave none.
        self.learned_limits: tuple[float | None, float | None] = (None, None)
        # Said before the job starts: where its deadline came from when not from this command.
        self.deadline_notes: list[str] = []
        self.deadline_at = self._resolve_deadline()

    def _resolve_deadline(self) -> float | None:
        """The deadline this run keeps: the one given, or the one stored with the job.

        The same command again keeps the deadline it set the first time (``--deadline 2h``
        means two hours from the first run, not from every rerun); ``resume`` and ``collect``
        keep it too. A stored deadline that has passed is dropped, and ``--deadline none``
        drops it on purpose.
        """
        text = (self.options.deadline or "").strip()
        job_id = self.prepared.job_id
        stored_at, stored_text = (
            self.ledger.job_deadline(job_id)
            if self.ledger.find_job(job_id) is not None
            else (None, None)
        )
        now = time.time()
        if text and drops_deadline(text):
            return None
        if stored_at is not None and stored_at > now and (not text or text == stored_text):
            if not text:
                self.deadline_notes.append(
                    f"deadline: kept from the job, {human_duration(stored_at - now)} from now"
                    f" ({_clock(stored_at)})"
                )
            return stored_at
        if text:
            return parse_deadline(text, now)
        if stored_at is not None:
            self.deadline_notes.append(
                f"deadline: the job's deadline ({_clock(stored_at)}) has passed;"
                " it goes on without one"
            )
        return None

    def _store_deadline(self, job_id: str) -> None:
        """Keep the deadline with the job (not in its spec: it is not part of its identity)."""
        text = (self.options.deadline or "").strip()
        stored_at, _ = self.ledger.job_deadline(job_id)
        if text and drops_deadline(text):
            self.ledger.set_job_deadline(job_id, None, None)
        elif text and stored_at != self.deadline_at:
            # An ISO time is the same point whenever it is read; a duration counts from now.
            self.ledger.set_job_deadline(job_id, self.deadline_at, text)
        elif not text and stored_at is not None and self.deadline_at is None:
            self.ledger.set_job_deadline(job_id, None, None)

    # -- the job in the ledger --------------------------------------------------------------
    def ensure_job(self) -> JobRecord:
        """Find this job in the ledger, or create it with every row rendered."""
        p = self.prepared
        job = self.ledger.find_job(p.job_id)
        source = (
            None
            if isinstance(p.table.source, str) and p.table.source.startswith("<")
            else p.table.source
        )
        self._check_output_clobber(job)
        if job is None:
            rows = (
                (key, position, request_hash(p.build_body(position), p.spec.endpoint))
                for position, key in enumerate(p.table.keys)
            )
            job = self.ledger.create_job(
                p.spec,
                rows,
                input_path=str(Path(source).resolve()) if source else None,
                output_path=str(p.output.resolve()) if p.output else None,
                mode=self.options.mode,
            )
        updates: dict[str, Any] = {"mode": self.options.mode}
        if p.output is not None:
            updates["output_path"] = str(p.output.resolve())
        if source:
            updates["input_path"] = str(Path(source).resolve())
        self.ledger.update_job(job.id, **updates)
        if p.skipped:
            self.ledger.record_outcomes(job.id, skipped_outcomes(p))
        return self.ledger.get_job(job.id)

    def _check_output_clobber(self, job: JobRecord | None) -> None:
        """Refuse to overwrite a file rowprompt did not write for this input."""
        out = self.prepared.output
        if out is None or not out.exists() or self.options.force:
            return
        target = out.resolve()
        if job is not None and job.output_path and Path(job.output_path) == target:
            return
        # Another job of this ledger over the same input (another mode, prompt or model) wrote
        # it: a rerun that changes a setting replaces its own earlier answers.
        source = self.prepared.table.source
        for other in self.ledger.list_jobs():
            same_input = (
                other.input_path is not None and Path(other.input_path) == Path(source).resolve()
            )
            if same_input and other.output_path and Path(other.output_path) == target:
                return
        raise OutputError(
            f"{out} exists and was not written by rowprompt for this input",
            hint="pass --force to overwrite it, or --output another path",
        )

    def context(self) -> RunContext:
        """The engines' view of the job."""
        p = self.prepared
        model = p.spec.model
        provider = _priced_as(p.spec.provider)

        def price(completion: Completion, batch: bool) -> float | None:
            return costs.cost_usd(
                completion.model or model,
                completion.prompt_tokens,
                completion.completion_tokens,
                cached_tokens=completion.cached_tokens,
                batch=batch,
                provider=provider,
            )

        return RunContext(
            job_id=p.job_id,
            model=model,
            build_body=p.build_body,
            price=price,
            max_attempts=self.options.max_attempts,
            use_cache=not self.options.no_cache,
            request_timeout=self.options.request_timeout,
            on_progress=self.options.on_progress,
            on_message=self.options.on_message,
            budget=self.budget,
            worst_cost=lambda prompt, output, batch: costs.cost_usd(
                model, prompt, output, batch=batch, provider=provider
            ),
            grouping=embedding_grouping(p),
            endpoint=p.spec.endpoint,
        )

    def begin(self, job_id: str) -> None:
        """A run of the job starts (run, resume, collect's driving): keep its deadline and how
        it runs with the job, and set up the budget. The job is acquired by this process."""
        self._store_deadline(job_id)
        self.ledger.set_job_run_settings(job_id, self.run_settings())
        if self.prepared.budget_cap is not None and self.options.on_message is not None:
            self.options.on_message(output_cap_message(self.prepared.budget_cap))
        if self.options.budget is not None:
            # A rerun (with a higher budget, say) asks again the rows a budget held back.
            self.ledger.requeue_failed(job_id, OVER_BUDGET)
            self.budget = Budget(self.options.budget, self.ledger.progress(job_id).cost_usd)
            self._hold_batches_in_flight(job_id, self.budget)

    def _hold_batches_in_flight(self, job_id: str, budget: Budget) -> None:
        """Hold the worst case of the rows that batches of an earlier process carry.

        Those batches are paid for when they finish, so what they may cost is not this run's
        to spend again (a detached run, then ``resume`` or ``collect``). Each row holds its
        shard's share of the shard's estimate, all of it priced as the row's reservation was;
        its answer settles the hold as usual.
        """
        worst = self.context().worst_cost
        if worst is None:
            return
        params = self.prepared.spec.params
        embedding = self.prepared.spec.endpoint == "embeddings"
        cap = params.get("max_completion_tokens") or params.get("max_tokens")
        output = 0 if embedding else int(cap or DEFAULT_OUTPUT_ESTIMATE)
        for shard in self.ledger.shards(job_id, active_only=True):
            rows = self.ledger.shard_rows(job_id, shard.number)
            if not rows:
                continue
            per_row = shard.estimated_tokens / max(shard.rows, len(rows))
            row_output = min(output, int(per_row))
            amount = worst(max(0, round(per_row) - row_output), row_output, True)
            if amount is None:
                continue  # no price: prepare refused --budget already
            for key, _ in rows:
                budget.hold(key, amount)

    def run_settings(self) -> dict[str, Any]:
        """This run's :data:`RUN_SETTINGS`, as stored with the job."""
        settings = {name: getattr(self.options, name) for name in RUN_SETTINGS}
        settings["structured"] = self.prepared.structured  # what it resolved to
        if settings["sandbox_rules"]:
            settings["sandbox_rules"] = str(Path(settings["sandbox_rules"]).resolve())
        return settings

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> JobRecord:
        """Drive the job until it is complete (or submitted, with ``detach``)."""
        job = self.ensure_job()
        self.ledger.acquire(job.id)
        self.begin(job.id)
        opened = open_provider(
            self.options.provider,
            self.options.base_url,
            request_timeout=self.options.request_timeout,
            sandbox_rules=self.options.sandbox_rules,
            home=self.ledger.home,
            endpoint=self.prepared.spec.endpoint,
        )
        try:
            await self._drive(job, opened)
        finally:
            await opened.close()
            self.ledger.release(job.id)
        return self.ledger.get_job(job.id)

    async def _drive(self, job: JobRecord, opened: OpenedProvider) -> None:
        check = getattr(opened.provider, "check_model", None)
        if check is not None and not self.ledger.progress(job.id).complete:
            await check(self.prepared.spec.model)
        heart = asyncio.create_task(self._heartbeat(job.id))
        try:
            await drive_job(self, job, opened)
            if not self.stopped:
                await self.finish(opened.provider)
        finally:
            heart.cancel()

    async def finish(self, provider: Provider) -> None:
        """Repair unparsable answers once every row has ended, then mark the job done."""
        job_id = self.prepared.job_id
        if not self.ledger.progress(job_id).complete:
            return
        await repair_rows(
            provider,
            self.ledger,
            self.context(),
            self.prepared.answer,
            self.prepared.structured,
            rounds=self.options.repair,
        )
        self.ledger.update_job(job_id, state=JobState.DONE)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(5)
            self.ledger.heartbeat(job_id)

    def output_frame(self) -> tuple[pd.DataFrame, list[str]]:
        """The output table as it stands, and the names of its answer columns."""
        p = self.prepared
        if p.spec.endpoint == "embeddings":
            return build_embedding_output(p.table.frame, p.table.keys, self.ledger, p.job_id), []
        return build_output(
            p.table.frame, p.table.keys, self.ledger, p.job_id, p.answer, p.structured
        )

    def write_output(self, *, write: bool = True) -> pd.DataFrame:
        """The output table; written to the output path when there is one and ``write``."""
        p = self.prepared
        frame, answer_columns = self.output_frame()
        if write and self.options.write_output and p.output is not None:
            if p.spec.endpoint == "embeddings":
                write_embedding_output(frame, p.output, neutralise=not self.options.raw_cells)
                return frame
            untrusted = () if self.options.raw_cells else [*answer_columns, *UNTRUSTED_COLUMNS]
            tables.write_table(frame, p.output, neutralise_columns=untrusted)
        return frame

    def estimate(
        self, pilot_completion_tokens: float | None = None, pilot_rows: int = 0
    ) -> Estimate:
        """Rows, tokens, cost and duration in each mode; spends nothing."""
        p = self.prepared
        return estimate_job(
            p,
            self.ledger,
            plan_for=self._plan_as_if_now,
            history=batch_history(self.ledger, p.spec.provider, p.spec.model),
            use_cache=not self.options.no_cache,
            rpm=self.options.rpm,
            tpm=self.options.tpm,
            pilot_completion_tokens=pilot_completion_tokens,
            pilot_rows=pilot_rows,
        )

    def _plan_as_if_now(self, rows: int) -> Plan:
        """The plan of a run starting now: counting a large table's tokens takes a while, and
        a ``--deadline 1h`` asked of an estimate means an hour from when the run would start."""
        self.deadline_notes = []
        self.deadline_at = self._resolve_deadline()
        return plan_job(self, rows)


# -- jobs found by id (collect, resume, status, cancel) -------------------------------------
def options_for_job(job: JobRecord, base: RunOptions | None = None) -> RunOptions:
    """Run options that rebuild a stored job's requests exactly, and run it as it last ran.

    The job's identity comes from its spec. The :data:`RUN_SETTINGS` come from the ones
    stored with it, except where ``base`` gives a value of its own (one that differs from the
    :class:`RunOptions` default): what this command was given wins.
    """
    spec = job.spec
    options = replace(base) if base else RunOptions()
    defaults = _defaults()
    for name, value in job.run_settings.items():
        if name in RUN_SETTINGS and getattr(options, name) == defaults[name]:
            setattr(options, name, value)
    options.prompt, options.prompt_file = spec.prompt, None
    options.system, options.system_file = spec.system, None
    options.model, options.provider, options.base_url = spec.model, spec.provider, spec.base_url
    options.output_type = spec.answer_spec
    options.schema = None
    options.id_column, options.sheet, options.limit = spec.id_column, spec.sheet, spec.limit
    options.max_tokens = spec.params.get("max_completion_tokens") or spec.params.get("max_tokens")
    options.temperature = spec.params.get("temperature")
    options.mode = spec.mode
    options.endpoint = spec.endpoint
    options.image_columns = list(spec.image_columns)
    if spec.endpoint == "embeddings":
        options.dimensions = spec.params.get("dimensions")
        options.skip_empty = True  # the job exists: its blank rows (if any) were skipped
    return options


@functools.cache
def _defaults() -> dict[str, Any]:
    """The default of each :data:`RUN_SETTINGS` field of :class:`RunOptions`."""
    fresh = RunOptions()
    known = {f.name for f in fields(RunOptions)}
    return {name: getattr(fresh, name) for name in RUN_SETTINGS if name in known}


def reopen(job: JobRecord, options: RunOptions, frame: pd.DataFrame | None = None) -> Prepared:
    """The prepared job again from its stored spec and its input (which must be unchanged)."""
    source: Any = frame
    if source is None:
        if not job.input_path:
            raise InputError(
                f"job {job.id} was made from a DataFrame; its input is not on disk",
                hint="collect it from the Python session that submitted it (Job.results())",
            )
        source = job.input_path
    if options.output is None and job.output_path:
        options.output = job.output_path
    options.force = True if options.output == job.output_path else options.force
    prepared = prepare(source, options)
    if prepared.spec != job.spec:
        if prepared.table.content_hash != job.spec.input_hash:
            raise InputError(
                f"{job.input_path} changed since job {job.id} was created",
                hint="restore the original file, or run the job again as a new one",
            )
        raise ConfigError(f"job {job.id} cannot be rebuilt from its stored settings")
    return prepared


def _clock(stamp: float) -> str:
    """A Unix time as the local time of day (with the date when it is not today)."""
    when = datetime.datetime.fromtimestamp(stamp)
    today = datetime.date.today()
    return when.strftime("%H:%M" if when.date() == today else "%Y-%m-%d %H:%M")


def wait_seconds(start: float) -> float:
    """Seconds since ``start``."""
    return time.monotonic() - start
