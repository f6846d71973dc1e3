"""Embeddings end to end: ``rowprompt.embed`` and ``rowprompt embed`` against a real sandbox.

Every vector is compared with the sandbox's own vector for that row's text
(:func:`expected_embedding`), so a row given another row's vector fails the test.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

import rowprompt
from rowprompt import costs, vectors
from rowprompt.api import list_jobs
from rowprompt.cli import main
from rowprompt.errors import InputError
from rowprompt.providers.openai_embeddings import SHAPE
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.embeddings import expected_embedding
from rowprompt.tokens import count_text
from tests.helpers import RP, fast_config
from tests.reliability.harness import clean_env, in_flight_realtime, ledger_query

MODEL = "text-embedding-3-small"
TEXTS = ["Great, really great", 'It said "fragile"', "line one\nline two", "007", "Très bien 👍"]


def table(n: int = 12) -> pd.DataFrame:
    """Rows with ids and awkward texts."""
    return pd.DataFrame(
        {"id": [f"r{i:02d}" for i in range(n)], "text": [f"{TEXTS[i % 5]} #{i}" for i in range(n)]}
    )


def embed(frame: Any, sandbox: Sandbox, tmp_path: Path, **options: Any) -> pd.DataFrame:
    """``rowprompt.embed`` over the sandbox with a home of the test's own."""
    options.setdefault("mode", "realtime")
    return rowprompt.embed(
        frame,
        column="text",
        model=MODEL,
        provider="sandbox",
        base_url=sandbox.base_url,
        home=str(tmp_path / "home"),
        poll_interval=0.1,
        **options,
    )


def assert_vectors(result: pd.DataFrame, texts: list[str], dims: int | None) -> None:
    """Each row holds the sandbox's vector for its own text."""
    for vector, text in zip(result["embedding"], texts, strict=True):
        assert vector.dtype == np.float32
        assert np.array_equal(vector, expected_embedding(text, dims)), text


def cli(*args: str) -> Result:
    """Run a ``rowprompt`` command in this process (the kill tests run real processes)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def embedding_requests(sandbox: Sandbox) -> list[dict[str, Any]]:
    """The sandbox's log of answered embeddings requests."""
    return [e for e in sandbox.requests() if "inputs" in e and e["status"] == 200]


def test_realtime_groups_rows_and_gives_each_row_its_vector(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(12)
    result = embed(frame, sandbox, tmp_path, dimensions=16, inputs_per_request=5)
    pd.testing.assert_frame_equal(result[frame.columns], frame)
    assert list(result.columns) == [
        "id", "text", "embedding", "_status", "_error", "_prompt_tokens", "_cost_usd", "_via",
    ]  # fmt: skip
    assert set(result["_status"]) == {"ok"} and set(result["_via"]) == {"realtime"}
    assert_vectors(result, list(frame["text"]), 16)
    # Five rows a request: three requests for twelve rows, every row asked once.
    sent = embedding_requests(sandbox)
    assert [e["inputs"] for e in sent] == [5, 5, 2]
    assert sorted(t for e in sent for t in e["input_texts"]) == sorted(frame["text"])
    # Usage splits back to the rows by their own token counts, summing to what was billed.
    assert list(result["_prompt_tokens"]) == [count_text(t, MODEL) for t in frame["text"]]
    assert int(result["_prompt_tokens"].sum()) == sum(e["prompt_tokens"] for e in sent)
    price = costs.cost_usd(MODEL, int(result["_prompt_tokens"].sum()), 0)
    assert float(result["_cost_usd"].sum()) == pytest.approx(price)


def test_batch_mode_gives_the_same_vectors_at_half_price(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = table(9)
    result = embed(frame, sandbox, tmp_path, mode="batch", dimensions=8)
    assert set(result["_via"]) == {"batch"}
    assert_vectors(result, list(frame["text"]), 8)
    assert sandbox.stats()["batches_created"] == 1
    assert embedding_requests(sandbox) == []
    tokens = int(result["_prompt_tokens"].sum())
    assert float(result["_cost_usd"].sum()) == pytest.approx(
        costs.cost_usd(MODEL, tokens, 0, batch=True)
    )
    assert costs.cost_usd(MODEL, tokens, 0, batch=True) == pytest.approx(
        costs.cost_usd(MODEL, tokens, 0) / 2
    )


def test_a_rerun_pays_nothing_and_another_mode_takes_the_cache(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(7)
    first = embed(frame, sandbox, tmp_path)
    seen = len(sandbox.requests())
    second = embed(frame, sandbox, tmp_path)
    assert len(sandbox.requests()) == seen
    pd.testing.assert_frame_equal(first.drop(columns="embedding"), second.drop(columns="embedding"))
    third = embed(frame, sandbox, tmp_path, mode="batch")
    assert set(third["_via"]) == {"cache"} and float(third["_cost_usd"].sum()) == 0
    assert_vectors(third, list(frame["text"]), None)
    assert sandbox.stats()["batches_created"] == 0
    # Another size is another job: it is asked again.
    embed(frame, sandbox, tmp_path, dimensions=4)
    assert len(sandbox.requests()) > seen
    assert len({j.job.id for j in list_jobs(str(tmp_path / "home"))}) == 3


def test_blank_text_is_refused_naming_rows_and_column_before_spending(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(6)
    frame.loc[2, "text"] = "   "
    frame.loc[4, "text"] = None
    with pytest.raises(InputError) as refused:
        embed(frame, sandbox, tmp_path, id_column="id")
    message = refused.value.one_line()
    assert "r02, r04" in message and "'text'" in message and "--skip-empty" in message
    assert sandbox.requests() == [] and list_jobs(str(tmp_path / "home")) == []
    # With --skip-empty those rows are skipped and every other row embedded.
    result = embed(frame, sandbox, tmp_path, id_column="id", skip_empty=True)
    assert list(result["_status"]) == ["ok", "ok", "skipped", "ok", "skipped", "ok"]
    assert result["embedding"][2] is None and result["_via"][2] is None
    kept = [0, 1, 3, 5]
    assert_vectors(result.iloc[kept], [str(frame["text"][i]) for i in kept], None)


def test_text_over_the_input_limit_is_refused_naming_the_row(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(3)
    frame.loc[1, "text"] = long = "word " * 9000
    count = f"{count_text(long, MODEL):,}"
    with pytest.raises(InputError, match=f"row 2, column 'text': the text has {count} tokens"):
        embed(frame, sandbox, tmp_path)
    assert sandbox.requests() == []


def test_a_group_refused_with_a_400_fails_only_its_bad_row(tmp_path: Path) -> None:
    rules = [{"pattern": "^poison", "status": 400, "message": "scripted bad input"}]
    with Sandbox(fast_config(rules=rules)) as sb:
        frame = table(6)
        frame.loc[3, "text"] = "poison pill"
        result = embed(frame, sb, tmp_path, inputs_per_request=6)
        assert list(result["_status"]) == ["ok", "ok", "ok", "failed", "ok", "ok"]
        assert "scripted bad input" in result["_error"][3]
        kept = [0, 1, 2, 4, 5]
        assert_vectors(result.iloc[kept], [frame["text"][i] for i in kept], None)
        # One request for the group, refused; then one per row.
        assert [e["inputs"] for e in sb.requests()] == [6, 1, 1, 1, 1, 1, 1]


def test_cli_writes_parquet_with_a_list_column_and_csv_with_npy(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(5)
    frame.loc[1, "text"] = ""
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    common = ["--column", "text", "--model", MODEL, "--provider", "sandbox"]
    common += ["--base-url", sandbox.base_url, "--home", str(tmp_path / "home"), "--skip-empty"]
    common += ["--dimensions", "8", "--yes", "--quiet", "--no-report", "--poll-interval", "0.1"]
    out = tmp_path / "out.parquet"
    done = cli("embed", str(src), *common, "--output", str(out), "--mode", "realtime")
    assert done.exit_code == 0, done.output
    assert str(pq.read_schema(out).field("embedding").type) == "list<element: float>"
    written = pd.read_parquet(out)
    assert list(written["_status"]) == ["ok", "skipped", "ok", "ok", "ok"]
    assert written["embedding"][1] is None
    assert np.array_equal(written["embedding"][2], expected_embedding(frame["text"][2], 8))
    # CSV: the table without vectors, the vectors beside it; a batch collected later.
    csv_out = tmp_path / "out.csv"
    submitted = cli("embed", str(src), *common, "--output", str(csv_out), "--mode", "batch",
                        "--detach", "--no-cache")  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job = submitted.output.split("rowprompt collect ")[1].split()[0]
    collected = cli("collect", job, "--wait", "--home", str(tmp_path / "home"), "--quiet")
    assert collected.exit_code == 0, collected.output
    table_out = pd.read_csv(csv_out, dtype=str, keep_default_na=False)
    assert "embedding" not in table_out and list(table_out["_via"]) == ["batch", "", *["batch"] * 3]
    matrix = np.load(tmp_path / "out.embeddings.npy")
    assert matrix.shape == (5, 8) and matrix.dtype == np.float32
    assert np.isnan(matrix[1]).all()
    for i in (0, 2, 3, 4):
        assert np.array_equal(matrix[i], expected_embedding(frame["text"][i], 8))
    # A column the input lacks: one line, no traceback.
    bad = cli("embed", str(src), *common, "--column", "nope")
    lines = bad.output.strip().splitlines()
    assert bad.exit_code != 0 and len(lines) == 1 and "'nope'" in lines[0]


def _kill_and_resume(
    tmp_path: Path, mode: str, kill_at: tuple[str, str], nth: int, resume: bool
) -> None:
    """Run ``rowprompt embed`` in a child, SIGKILL it at ``kill_at``, resume it, check.

    ``resume``: continue with ``rowprompt resume JOB``, else by running the same command.
    """
    n = 40
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"id": [f"a{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    ).to_csv(src, index=False)
    home, out = tmp_path / "home", tmp_path / "out.parquet"
    config = fast_config(latency_ms=40.0, batch_rows_per_second=200.0)
    with Sandbox(config) as sb:
        args = [RP, "embed", str(src), "--column", "text", "--model", MODEL, "--provider",
                "sandbox", "--base-url", sb.base_url, "--home", str(home), "--output", str(out),
                "--mode", mode, "--inputs-per-request", "4", "--concurrency", "2", "--yes",
                "--quiet", "--no-report", "--poll-interval", "0.1", "--dimensions",
                "4"]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=clean_env(), text=True)  # fmt: skip
        killed = threading.Event()
        seen = [0]

        def hook(event: str, endpoint: str) -> None:
            if (event, endpoint) == kill_at and not killed.is_set():
                seen[0] += 1
                if seen[0] >= nth:
                    killed.set()
                    proc.send_signal(signal.SIGKILL)

        sb.on_request(hook)
        try:
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            sb.on_request(None)
        assert killed.is_set() and proc.returncode == -signal.SIGKILL
        assert ledger_query(home, "SELECT count(*) FROM rows WHERE state = 'done'")[0][0] < n
        allowed = {f"row {i}" for i in in_flight_realtime(home)}
        if resume:
            (job,) = ledger_query(home, "SELECT id FROM jobs")[0]
            args = [RP, "resume", str(job), "--home", str(home), "--quiet"]
        again = subprocess.run(args, capture_output=True, text=True, env=clean_env(), timeout=60)
        assert again.returncode == 0, again.stderr
        result = pd.read_parquet(out)
        assert list(result["id"]) == [f"a{i}" for i in range(n)]
        assert set(result["_status"]) == {"ok"}
        for i, vector in enumerate(result["embedding"]):
            assert np.array_equal(vector, expected_embedding(f"row {i}", 4))
        # Nothing paid twice, but what was in flight at the kill.
        paid = Counter(t for e in embedding_requests(sb) for t in e["input_texts"])
        assert {t for t, times in paid.items() if times > 1} <= allowed
        assert sb.stats()["batch_custom_ids_billed_twice"] == 0


def test_a_killed_realtime_job_resumes_with_every_row_once(tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, "realtime", ("response", "POST /v1/embeddings"), 3, resume=True)


def test_a_killed_batch_job_resumes_and_adopts_its_batch(tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, "batch", ("response", "POST /v1/batches"), 1, resume=False)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10**6), st.lists(st.integers(0, 9000), min_size=1, max_size=50))
def test_usage_splits_back_to_rows_summing_to_the_total(total: int, weights: list[int]) -> None:
    shares = vectors.split_usage(total, weights)
    assert sum(shares) == total and len(shares) == len(weights)
    if sum(weights):
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share - total * weight / sum(weights)) < 1
    assert vectors.split_usage(sum(weights), weights) == weights


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=20), min_size=1,
                max_size=5))  # fmt: skip
def test_answers_become_exact_vector_text_whatever_the_encoding(rows: list[list[float]]) -> None:
    floats = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(rows)]
    encoded = [{**item, "embedding": vectors.encode(item["embedding"])} for item in floats]
    for data in (floats, encoded[::-1]):  # the order of `data` does not matter, `index` does
        body = {"object": "list", "data": data, "model": MODEL, "usage": {"prompt_tokens": 3}}
        completion = SHAPE.to_completion(body)
        assert completion.prompt_tokens == 3 and completion.completion_tokens == 0
        parts = vectors.split_vectors(completion.text, len(rows))
        for part, row in zip(parts, rows, strict=True):
            assert np.array_equal(vectors.decode(part), np.asarray(row, dtype=np.float32))
    with pytest.raises(ValueError):
        vectors.split_vectors(completion.text, len(rows) + 1)
    assert SHAPE.to_request({"model": MODEL, "input": "x"})["encoding_format"] == "base64"


def test_skipped_rows_are_counted_as_skipped_everywhere_a_user_looks(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from rowprompt.report import write_report

    frame = table(4)
    frame.loc[1, "text"] = " "
    embed(frame, sandbox, tmp_path, skip_empty=True)
    home = str(tmp_path / "home")
    (job,) = list_jobs(home)
    assert (job.progress.skipped, job.progress.failed - job.progress.skipped) == (1, 0)
    status = CliRunner().invoke(main, ["status", job.job.id, "--home", home])
    assert "3 answered, 0 failed, 1 skipped" in status.output
    listing = CliRunner().invoke(main, ["jobs", "--home", home]).output.splitlines()
    assert listing[0].split()[5:8] == ["failed", "skipped", "cost"]
    assert listing[1].split()[6:8] == ["0", "1"]  # (the created time has a space)
    report = write_report(job.job.id, home, str(tmp_path / "r.html")).read_text()
    assert "<code>empty_input</code> (skipped)" in report
