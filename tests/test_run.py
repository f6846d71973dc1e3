"""The core workflow end to end: a table in, the same table with answers out, both modes.

Every test talks to a real sandbox over HTTP through the real SDK; answers are checked row by
row against the sandbox's deterministic answer for that row's request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.model import expected_answer

PROMPT = "Rate this review from 1 to 5: {{ review }}"
ANSWER_COLUMNS = [
    "response",
    "_status",
    "_error",
    "_raw",
    "_prompt_tokens",
    "_completion_tokens",
    "_cost_usd",
    "_via",
]


def reviews(n: int = 12) -> pd.DataFrame:
    """A small table with awkward values: commas, quotes, newlines, leading zeros, unicode."""
    texts = [
        "Great, really great",
        'It said "fragile" and it broke',
        "line one\nline two",
        "007 stars",
        "Très bien 👍",
        "",
    ]
    return pd.DataFrame(
        {
            "id": [f"r{i:03d}" for i in range(n)],
            "review": [f"{texts[i % len(texts)]} #{i}" for i in range(n)],
            "stars": [str(i % 5 + 1) for i in range(n)],
        }
    )


def expected_for(frame: pd.DataFrame, model: str = "gpt-4o-mini") -> list[str]:
    """The sandbox's answer for each row's rendered request."""
    out = []
    for text in frame["review"]:
        content = PROMPT.replace("{{ review }}", "" if text is None else str(text))
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        out.append(expected_answer(body))
    return out


def write_input(frame: pd.DataFrame, path: Path) -> None:
    """Write the test table in the format the path's extension names."""
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".xlsx":
        frame.to_excel(path, index=False)
    elif suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in frame.to_dict("records")),
            encoding="utf-8",
        )
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)


def read_output(path: Path) -> pd.DataFrame:
    """Read an output table back, strings kept as strings where the format allows."""
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    if suffix == ".xlsx":
        return pd.read_excel(path, dtype=str, keep_default_na=False)
    if suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    return pd.read_parquet(path)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".xlsx", ".jsonl", ".parquet"])
def test_every_format_round_trips_with_the_right_answers(
    sandbox: Sandbox, tmp_path: Path, ext: str, mode: str
) -> None:
    frame = reviews()
    src = tmp_path / f"in{ext}"
    out = tmp_path / f"out{ext}"
    write_input(frame, src)
    result = rowprompt.run(
        str(src),
        prompt=PROMPT,
        provider="sandbox",
        base_url=sandbox.base_url,
        mode=mode,
        output=str(out),
        home=str(tmp_path / "home"),
        poll_interval=0.2,
    )
    written = read_output(out)
    for table in (result, written):
        assert list(table.columns) == [*frame.columns, *ANSWER_COLUMNS]
        assert len(table) == len(frame)
        for column in frame.columns:
            assert [("" if v is None else str(v)) for v in table[column]] == list(frame[column])
        assert list(table["_status"]) == ["ok"] * len(frame)
        assert list(table["_via"]) == [mode] * len(frame)
        assert list(table["response"]) == expected_for(frame)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_dataframe_in_gives_a_dataframe_out(sandbox: Sandbox, tmp_path: Path, mode: str) -> None:
    frame = reviews(7)
    frame["stars"] = frame["stars"].astype(int)
    result = rowprompt.run(
        frame,
        prompt=PROMPT,
        provider="sandbox",
        base_url=sandbox.base_url,
        mode=mode,
        home=str(tmp_path / "home"),
        poll_interval=0.2,
    )
    pd.testing.assert_frame_equal(result[frame.columns], frame)
    assert list(result["response"]) == expected_for(frame)
    assert result["_prompt_tokens"].min() > 0
    assert result["_cost_usd"].sum() > 0


def test_running_again_pays_nothing_twice(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = reviews(10)
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "provider": "sandbox",
        "base_url": sandbox.base_url,
        "mode": "realtime",
        "home": str(tmp_path / "home"),
    }
    first = rowprompt.run(frame, **kwargs)
    seen = len(sandbox.requests())
    second = rowprompt.run(frame, **kwargs)
    assert len(sandbox.requests()) == seen == 10
    pd.testing.assert_frame_equal(first, second)
    # Another mode is another job; its answers come from the cache, not the provider.
    third = rowprompt.run(frame, **{**kwargs, "mode": "batch", "poll_interval": 0.2})
    assert set(third["_via"]) == {"cache"}
    assert list(third["response"]) == list(first["response"])
    assert sandbox.stats()["batches_created"] == 0


def test_id_column_keys_rows_and_limit_runs_the_first_rows(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = reviews(9)
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    result = rowprompt.run(
        str(src),
        prompt=PROMPT,
        provider="sandbox",
        base_url=sandbox.base_url,
        mode="realtime",
        id_column="id",
        limit=4,
        home=str(tmp_path / "home"),
    )
    assert list(result["id"]) == ["r000", "r001", "r002", "r003"]
    assert list(result["response"]) == expected_for(frame.head(4))


def test_submit_returns_a_job_to_wait_for(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = reviews(6)
    job = rowprompt.submit(
        frame,
        prompt=PROMPT,
        provider="sandbox",
        base_url=sandbox.base_url,
        home=str(tmp_path / "home"),
    )
    assert job.status().progress.total == 6
    final = job.wait(poll_interval=0.2)
    assert final.progress.done == 6
    results = job.results()
    assert list(results["response"]) == expected_for(frame)
    assert set(results["_via"]) == {"batch"}


def test_run_works_inside_a_running_event_loop(sandbox: Sandbox, tmp_path: Path) -> None:
    """Jupyter runs an event loop in the main thread; rowprompt.run must still work there."""
    import asyncio

    frame = reviews(3)

    async def notebook_cell() -> pd.DataFrame:
        return rowprompt.run(
            frame,
            prompt=PROMPT,
            provider="sandbox",
            base_url=sandbox.base_url,
            mode="realtime",
            home=str(tmp_path / "home"),
        )

    result = asyncio.run(notebook_cell())
    assert list(result["response"]) == expected_for(frame)
