"""The report's charts: static SVG drawn by matplotlib, inlined into the page.

Static SVG keeps a report small (tens of kilobytes, not the 4 MB plotly's JavaScript would
add), renders offline in any browser with no script, and prints. matplotlib is imported only
here, lazily, and used through ``Figure`` (never pyplot), so no GUI backend or global figure
state is involved; one lock serialises rendering because ``rc_context`` is process-wide.
"""

from __future__ import annotations

import io
import re
import statistics
import threading
from typing import TYPE_CHECKING, Any, cast

from rowprompt.report.series import ReportData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_LOCK = threading.Lock()
CHART_NAMES = ("realtime", "latency", "cost", "batches", "queue")
COLORS = {
    "ok": "#2f6fb3",
    "rate_limited": "#e8912d",
    "errors": "#c8372d",
    "retries": "#7b3fa0",
    "limit": "#333333",
    "tokens": "#3d9a6a",
    "actual": "#2f6fb3",
    "full": "#9aa5b1",
}
# Batch statuses in the order a batch lives them, with their timeline colours.
STATUS_COLORS = {
    "planned": "#d9dee4",
    "creating": "#c3ccd6",
    "waiting": "#f2d49b",
    "validating": "#9cc3e6",
    "in_progress": "#2f6fb3",
    "finalizing": "#6a5acd",
    "completed": "#3d9a6a",
    "failed": "#c8372d",
    "expired": "#e8912d",
    "cancelling": "#b0a0a0",
    "cancelled": "#8a7f7f",
    "lost": "#555555",
}
_RC: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text: small files, selectable, the page's own font
    # DejaVu Sans ships with matplotlib, so text is measured the same on every machine.
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e8ec",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9aa5b1",
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "legend.frameon": False,
    "legend.fontsize": 8,
}


def time_unit(span_s: float) -> tuple[float, str]:
    """(divisor, label) for a time axis spanning ``span_s`` seconds."""
    if span_s <= 180:
        return 1.0, "seconds into the run"
    if span_s <= 3 * 3600:
        return 60.0, "minutes into the run"
    return 3600.0, "hours into the run"


def _svg(fig: Figure, name: str, title: str) -> str:
    import matplotlib

    buffer = io.StringIO()
    # A fixed salt per chart keeps ids stable between renders and distinct between charts.
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # matplotlib's RDF metadata block only names the tool; inline, it is dead weight.
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.DOTALL)
    # Scale with the page: drop the fixed size, keep the viewBox.
    text = re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r"<svg\1", text, count=1)
    label = title.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    return text.replace(
        "<svg", f'<svg class="chart" data-chart="{name}" role="img" aria-label="{label}"', 1
    )


def _figure(width: float, height: float, rows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [a[0] for a in axes]


def render_all(data: ReportData) -> dict[str, str]:
    """Every chart the data allows, as inline SVG by name; a chart with no data is left out."""
    import matplotlib

    charts: dict[str, str] = {}
    with _LOCK, matplotlib.rc_context(cast(Any, _RC)):
        for name, draw in (
            ("realtime", realtime_chart),
            ("latency", latency_chart),
            ("cost", cost_chart),
            ("batches", batch_timeline),
            ("queue", queue_chart),
        ):
            svg = draw(data)
            if svg is not None:
                charts[name] = svg
    return charts


def realtime_chart(data: ReportData) -> str | None:
    """Requests and tokens per minute over time, the limit if recorded, 429s and errors."""
    rt = data.realtime
    if rt is None or not rt.t:
        return None
    div, unit = time_unit(max(rt.t[-1] + rt.bucket_s, 1))
    per_min = 60.0 / rt.bucket_s
    x = [t / div for t in rt.t]
    width = rt.bucket_s / div * 0.9
    fig, (top, bottom) = _figure(8.0, 4.6, rows=2)
    ok = [v * per_min for v in rt.ok]
    limited = [v * per_min for v in rt.rate_limited]
    errors = [v * per_min for v in rt.errors]
    zero = [0.0] * len(x)
    stacked = [a + b for a, b in zip(ok, limited, strict=True)]
    handles = [
        _bars(top, x, width, zero, ok, COLORS["ok"], "answered (200)"),
        _bars(top, x, width, ok, limited, COLORS["rate_limited"], "429"),
        _bars(top, x, width, stacked, errors, COLORS["errors"], "error"),
    ]
    # Retries are marked just above their bucket's bar, so they stay visible at any scale.
    tops = [a + b for a, b in zip(stacked, errors, strict=True)]
    pad = max(tops) * 0.04 if tops else 0
    retried = [(xi + width / 2, h + pad) for xi, h, v in zip(x, tops, rt.retries, strict=True) if v]
    if retried:
        (marks,) = top.plot(*zip(*retried, strict=True), "v", color=COLORS["retries"], ms=5,
                            label=f"retries ({sum(rt.retries):,})")  # fmt: skip
        handles.append(marks)
    peak = max([*tops, 0.0])
    limit = _limit_line(top, rt.limit_t, rt.limit_rpm, div, "limit (rpm)", peak)
    if limit is not None:
        handles.append(limit)
    top.set_ylabel("requests / min")
    top.set_title(f"Real-time requests ({rt.total:,} sent, {rt.bucket_s} s buckets)")
    # Beside the plot, never over it: bars reach any height, and a limit line the top.
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    tokens_per_min = [v * per_min for v in rt.tokens]
    tokens = _bars(bottom, x, width, zero, tokens_per_min, COLORS["tokens"], "tokens")
    limit = _limit_line(bottom, rt.limit_t, rt.limit_tpm, div, "limit (tpm)",
                        max([*tokens_per_min, 0.0]))  # fmt: skip
    bottom.set_ylabel("tokens / min")
    bottom.set_xlabel(unit)
    bottom.legend(handles=[tokens] if limit is None else [tokens, limit], loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    return _svg(fig, "realtime", "Real-time requests and tokens per minute")


def _bars(ax: Axes, x: list[float], width: float, bottom: list[float], heights: list[float],
          color: str, label: str) -> Any:  # fmt: skip
    """Bars as one shape per series (``Axes.bar`` makes an artist per bar: a chart of 150
    buckets took most of a report's drawing time). Returns the legend's handle."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    boxes = [
        [(left, low), (left + width, low), (left + width, low + h), (left, low + h)]
        for left, low, h in zip(x, bottom, heights, strict=True)
        if h
    ]
    if boxes:
        # Above the grid lines (zorder 2), as lines are.
        ax.add_collection(PolyCollection(boxes, facecolors=color, edgecolors="none", zorder=2))
    # Scale the axes to the bars, from zero, even where no bar was drawn.
    ax.update_datalim([(min(x), 0.0), (max(x) + width, max(0.0, *(
        lo + h for lo, h in zip(bottom, heights, strict=True))))])  # fmt: skip
    ax.autoscale_view()
    return Patch(facecolor=color, label=label)


def _limit_line(
    ax: Axes, t: list[float], values: list[float | None], div: float, label: str, peak: float
) -> Any:
    """The limit in force over time, as a dashed step line; its legend handle, or None.

    A limit far above what was sent (a provider's 10,000,000 a minute against a few hundred)
    would flatten the bars to nothing: the chart keeps the bars' scale, and the legend gives
    the limit's value instead.
    """
    from matplotlib.lines import Line2D

    points = [(ti / div, v) for ti, v in zip(t, values, strict=True) if v is not None]
    if not points:
        return None
    xs, ys = zip(*points, strict=True)
    style = {"color": COLORS["limit"], "linestyle": "--", "linewidth": 1.2}
    if peak > 0 and min(ys) > 4 * peak:
        ax.set_ylim(0, peak * 1.15)
        label = f"{label} {min(ys):,.0f}{'+' if max(ys) > min(ys) else ''}, off the scale"
        return Line2D([], [], label=label, **style)  # type: ignore[arg-type]
    top = max(peak, min(ys)) * 1.15
    if max(ys) > top:  # a later, higher limit: drawn to the edge, its value in the legend
        ax.set_ylim(0, top)
        label = f"{label}, up to {max(ys):,.0f}"
    right = ax.get_xlim()[1]
    (line,) = ax.step([*xs, max(right, xs[-1])], [*ys, ys[-1]], where="post", label=label,
                      **style)  # type: ignore[arg-type]  # fmt: skip
    return line


def _legend_above(ax: Axes) -> None:
    """The legend on the title's line, at the right: clear of the data, whatever its shape."""
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, borderaxespad=0.2)


def latency_chart(data: ReportData) -> str | None:
    """How long answered real-time requests took: a histogram with the median and p95."""
    values = data.latencies
    if len(values) < 2:
        return None
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    fig, (ax,) = _figure(4.0, 2.8)
    import numpy as np

    # numpy's histogram drawn as one shape: ``Axes.hist`` adds an artist per bin.
    counts, edges = np.histogram(ordered, bins=min(40, max(5, len(ordered) // 5)))
    _bars(ax, [float(e) for e in edges[:-1]], float(edges[1] - edges[0]), [0.0] * len(counts),
          [float(n) for n in counts], COLORS["ok"], "requests")  # fmt: skip
    for value, label, style in ((p50, "median", "-"), (p95, "p95", "--")):
        ax.axvline(value, color=COLORS["limit"], linestyle=style, linewidth=1,
                   label=f"{label} {value:.2f} s")  # fmt: skip
    ax.set_xlabel("seconds per request")
    ax.set_ylabel("requests")
    sampled = " (sampled)" if data.latencies_sampled else ""
    ax.set_title(f"Latency{sampled}")
    _legend_above(ax)
    return _svg(fig, "latency", "Latency of answered real-time requests")


def cost_chart(data: ReportData) -> str | None:
    """Cost accumulated over time, beside what the same answers cost at real-time prices."""
    if len(data.cost_t) < 2:
        return None
    div, unit = time_unit(max(data.cost_t[-1], 1))
    x = [t / div for t in data.cost_t]
    fig, (ax,) = _figure(4.0, 2.8)
    ax.step(x, data.cost_actual, where="post", color=COLORS["actual"], label="paid")
    full = [(xi, v) for xi, v in zip(x, data.cost_full, strict=True) if v is not None]
    if len(full) == len(x) and any(
        abs((f or 0) - a) > 1e-12 for f, a in zip(data.cost_full, data.cost_actual, strict=True)
    ):
        ax.step(*zip(*full, strict=True), where="post", color=COLORS["full"], linestyle="--",
                label="at real-time prices")  # fmt: skip
    ax.set_xlabel(unit)
    ax.set_ylabel("USD")
    ax.set_title("Cost over time")
    ax.legend(loc="upper left")
    return _svg(fig, "cost", "Cost accumulated over time")


def batch_timeline(data: ReportData) -> str | None:
    """One bar per batch shard, coloured by the status it was in at each moment."""
    shards = [s for s in data.shards if s.events]
    if not shards:
        return None
    end = data.end
    last = max(max(at for _, at in s.events) for s in shards)
    span = max(end, last) - data.t0
    div, unit = time_unit(max(span, 1))
    height = min(9.0, 1.4 + 0.22 * len(shards))
    fig, (ax,) = _figure(8.0, height)
    seen: dict[str, Any] = {}
    for row, shard in enumerate(shards):
        events = shard.events
        for i, (status, at) in enumerate(events):
            stop = events[i + 1][1] if i + 1 < len(events) else None
            if stop is None:
                if status in ("completed", "failed", "expired", "cancelled", "lost"):
                    stop = at + span * 0.004  # a final status: a thin tick, not a bar to now
                else:
                    stop = end
            color = STATUS_COLORS.get(status, "#bbbbbb")
            bars = ax.broken_barh([((at - data.t0) / div, max(stop - at, 0) / div)],
                                  (row - 0.4, 0.8), facecolors=color)  # fmt: skip
            seen.setdefault(status, bars)
    ax.set_yticks(range(len(shards)), [f"#{s.number}" for s in shards])
    if len(shards) > 30:  # too many labels to read: label every few
        step = -(-len(shards) // 30)
        ax.set_yticks(range(0, len(shards), step), [f"#{s.number}" for s in shards][::step])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(unit)
    ax.set_ylabel("batch shard")
    ax.set_title(f"Batches over time ({len(shards)} shards)")
    order = [s for s in STATUS_COLORS if s in seen] + [s for s in seen if s not in STATUS_COLORS]
    ax.legend([seen[s] for s in order], [s.replace("_", " ") for s in order],
              loc="upper center", bbox_to_anchor=(0.5, -0.18 if height < 3 else -0.08),
              ncols=min(6, len(order)))  # fmt: skip
    return _svg(fig, "batches", "Timeline of each batch")


def queue_chart(data: ReportData) -> str | None:
    """The job's tokens enqueued at the provider over time, against the model's queue limit."""
    q = data.queue
    if q is None or not q.t:
        return None
    span = max(max(q.t), data.end - data.t0, 1)
    div, unit = time_unit(span)
    x = [0.0, *(t / div for t in q.t), span / div]
    y = [0, *q.tokens, q.tokens[-1]]
    fig, (ax,) = _figure(8.0, 2.6)
    ax.fill_between(x, y, step="post", color=COLORS["ok"], alpha=0.25)
    ax.step(x, y, where="post", color=COLORS["ok"], label="enqueued tokens (estimated)")
    if q.limit is not None:
        ax.axhline(q.limit, color=COLORS["errors"], linestyle="--", linewidth=1.2,
                   label=f"queue limit {q.limit:,} ({q.limit_source})")  # fmt: skip
    ax.set_xlabel(unit)
    ax.set_ylabel("tokens")
    ax.set_title("Batch queue: tokens enqueued")
    _legend_above(ax)
    return _svg(fig, "queue", "Enqueued tokens against the queue limit")
