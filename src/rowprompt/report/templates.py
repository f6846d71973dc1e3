# ruff: noqa: E501
# (HTML and CSS read best one element per line, however long; the rest of the package keeps 100.)
"""The report's Jinja2 templates and stylesheet, kept apart from the code that fills them.

System fonts only (no web font is fetched), no script in the report itself.
"""

from __future__ import annotations

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --card:#fff;
        --accent:#2f6fb3; --bad:#c8372d; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
       Arial,sans-serif; color:var(--ink); background:var(--bg); }
header.top { background:#1f2933; color:#fff; padding:10px 24px; display:flex; gap:18px;
             align-items:center; }
header.top a { color:#cfe0f3; text-decoration:none; }
header.top .brand { font-weight:700; letter-spacing:.02em; }
main { max-width:1180px; margin:0 auto; padding:18px 24px 48px; }
h1 { font-size:22px; margin:4px 0 2px; } h1 code { font-size:20px; }
h2 { font-size:17px; margin:28px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
.sub { color:var(--muted); margin:0 0 12px; }
.badge { display:inline-block; padding:1px 9px; border-radius:10px; font-size:12px;
         font-weight:600; vertical-align:middle; background:#e4e7eb; }
.badge.done { background:#d7efe1; color:#1e6b43; } .badge.running { background:#dbe8f6; color:#1d4f85; }
.badge.waiting { background:#ebe3f7; color:#51358a; } .badge.cancelled { background:#eee; color:#555; }
.badge.stopped { background:#fbe6cf; color:#8a4b0f; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(140px,1fr)); gap:10px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:20px; font-weight:650; margin-top:2px; }
.card .s { color:var(--muted); font-size:12px; }
.bar { display:flex; height:14px; border-radius:7px; overflow:hidden; background:#eef0f3; margin:12px 0 4px; }
.bar span { display:block; height:100%; }
.legend { display:flex; flex-wrap:wrap; gap:12px; font-size:12px; color:var(--muted); }
.legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; vertical-align:-1px; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px; margin:10px 0; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:10px; }
@media (max-width:820px) { .grid2 { grid-template-columns:1fr; } }
svg.chart { width:100%; height:auto; display:block; }
table { border-collapse:collapse; width:100%; background:var(--card); font-size:13px; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f0f2f5; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.wrap { white-space:pre-wrap; word-break:break-word; max-width:420px; }
.note { background:#fff8e6; border:1px solid #f2d49b; border-radius:6px; padding:8px 12px;
        margin:8px 0; color:#6b4e00; font-size:13px; }
.empty { color:var(--muted); font-style:italic; }
pre.prompt { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px;
             white-space:pre-wrap; word-break:break-word; margin:6px 0; font-size:13px; }
.dot { display:inline-block; width:9px; height:9px; border-radius:50%; margin-right:5px; }
.actions button { font:inherit; padding:5px 14px; border-radius:6px; border:1px solid #9aa5b1;
                  background:#fff; cursor:pointer; margin-right:6px; }
.actions button.danger { border-color:var(--bad); color:var(--bad); }
.actions button:disabled { opacity:.5; cursor:default; }
#message { margin-left:8px; color:var(--muted); }
.progress { width:140px; height:8px; background:#eef0f3; border-radius:4px; overflow:hidden;
            display:inline-block; vertical-align:middle; margin-right:6px; }
.progress span { display:block; height:100%; background:var(--accent); }
footer { color:var(--muted); font-size:12px; margin-top:36px; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{{ title }}</title>
<style>{{ css }}</style>
{{ head_extra }}
</head>
<body>
<header class="top"><span class="brand">rowprompt</span>{{ nav }}</header>
<main id="report">{{ body }}</main>
{{ script }}
</body>
</html>
"""

BODY = """
{%- set j = d.job -%}
<h1>Job <code>{{ j.id }}</code> <span class="badge {{ d.state }}" id="state">{{ d.state }}</span></h1>
<p class="sub">{{ j.model }} via {{ j.provider }}, mode {{ j.mode }} ·
 input {{ j.input_path or "a DataFrame" }}{% if j.output_path %} → {{ j.output_path }}{% endif %} ·
 started {{ d.t0 | when }} · as of {{ d.generated_at | when }}</p>

<div class="cards">
 <div class="card"><div class="k">Rows</div><div class="v">{{ "{:,}".format(c.finished) }} / {{ "{:,}".format(c.total) }}</div>
  <div class="s">{{ "%.1f" | format(percent) }}% finished</div></div>
 <div class="card"><div class="k">Answered</div><div class="v">{{ "{:,}".format(c.statuses.get("ok", 0)) }}</div>
  <div class="s">{% for via, n in c.by_via | dictsort %}{{ "{:,}".format(n) }} {{ via }}{% if not loop.last %}, {% endif %}{% endfor %}</div></div>
 <div class="card"><div class="k">Not answered</div>
  <div class="v">{{ "{:,}".format(c.statuses.get("failed", 0) + c.statuses.get("skipped", 0) + c.statuses.get("parse_error", 0) + c.statuses.get("refused", 0) + c.statuses.get("truncated", 0)) }}</div>
  <div class="s">failed, skipped, unparsed, refused or cut</div></div>
 <div class="card"><div class="k">Tokens</div><div class="v">{{ "{:,}".format(c.prompt_tokens + c.completion_tokens) }}</div>
  <div class="s">{{ "{:,}".format(c.prompt_tokens) }} in, {{ "{:,}".format(c.completion_tokens) }} out</div></div>
 <div class="card"><div class="k">Cost</div><div class="v">{{ c.cost_usd | money }}</div>
  <div class="s">as charged per row</div></div>
 <div class="card"><div class="k">Saved</div><div class="v">{{ ((d.batch_saved_usd or 0) + (d.cache_saved_usd or 0)) | money }}</div>
  <div class="s">batch {{ d.batch_saved_usd | money }}, cache {{ d.cache_saved_usd | money }}</div></div>
 <div class="card"><div class="k">Duration</div><div class="v">{{ d.duration_s | duration }}</div>
  <div class="s">{% if d.state in ("running", "waiting") %}so far{% else %}first to last activity{% endif %}</div></div>
</div>
<div class="bar" title="rows by status">{% for s, n, pct, color in bar %}<span style="width:{{ "%.3f" | format(pct) }}%;background:{{ color }}" title="{{ s }}: {{ n }}"></span>{% endfor %}</div>
<div class="legend">{% for s, n, pct, color in bar %}<span><i style="background:{{ color }}"></i>{{ s.replace("_", " ") }} {{ "{:,}".format(n) }}</span>{% endfor %}
{% if c.statuses.get("ok") and j.answer_spec != "text" and not c.parse_checked %}<span>(parse errors not counted here)</span>{% endif %}</div>
{% for note in d.notes %}<div class="note">{{ note }}</div>{% endfor %}

{% if charts.realtime %}<h2>Real time</h2><div class="panel">{{ charts.realtime }}</div>{% endif %}
{% if charts.realtime %}<h2>{% if charts.latency %}Latency and cost{% else %}Cost{% endif %}</h2>
<div class="grid2">
 {% if charts.latency %}<div class="panel">{{ charts.latency }}</div>{% endif %}
 <div class="panel">{% if charts.cost %}{{ charts.cost }}{% else %}<p class="empty">Nothing paid yet.</p>{% endif %}</div>
</div>
{% endif %}{% if d.retried %}<table class="retried"><tr><th>failed attempts (retried unless the row failed)</th><th class="num">count</th></tr>
{% for what, n in d.retried %}<tr><td>{{ what }}</td><td class="num">{{ "{:,}".format(n) }}</td></tr>{% endfor %}</table>{% endif %}

<h2>Batches</h2>
{% if shards %}
{% if charts.batches %}<div class="panel">{{ charts.batches }}</div>{% endif %}
{% if charts.queue %}<div class="panel">{{ charts.queue }}</div>{% endif %}
<table class="shards"><tr><th>shard</th><th>batch</th><th class="num">rows</th><th class="num">est. tokens</th><th>status</th><th>error</th></tr>
{% for s in shards %}<tr><td>#{{ s.number }}</td><td><code>{{ s.batch_id or "-" }}</code></td><td class="num">{{ "{:,}".format(s.rows) }}</td>
<td class="num">{{ "{:,}".format(s.estimated_tokens) }}</td>
<td><span class="dot" style="background:{{ status_colors.get(s.status or s.state, "#bbb") }}"></span>{{ s.status or s.state }}{% if s.state != (s.status or s.state) %} ({{ s.state }}){% endif %}</td>
<td class="wrap">{{ s.error or "" }}</td></tr>{% endfor %}
{% if more_shards %}<tr><td colspan="6" class="empty">… and {{ more_shards }} more shards</td></tr>{% endif %}
</table>
{% else %}<p class="empty">No batches in this job.</p>{% endif %}

{% if not charts.realtime %}<h2>{% if charts.latency %}Latency and cost{% else %}Cost{% endif %}</h2>
<div class="grid2">
 {% if charts.latency %}<div class="panel">{{ charts.latency }}</div>{% endif %}
 <div class="panel">{% if charts.cost %}{{ charts.cost }}{% else %}<p class="empty">Nothing paid yet.</p>{% endif %}</div>
</div>
{% endif %}
<h2>Failures</h2>
{% if d.failures %}<table class="failures"><tr><th>reason</th><th class="num">rows</th><th>message</th><th>examples (row: message)</th></tr>
{% for f in d.failures %}<tr><td><code>{{ f.code }}</code>{% if f.status == "skipped" %} (skipped){% endif %}</td><td class="num">{{ "{:,}".format(f.count) }}</td>
<td class="wrap">{{ f.message }}</td><td class="wrap">{% for pos, label, msg in f.examples %}row {{ label }}{% if msg and msg != f.message %}: {{ msg }}{% endif %}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endfor %}
</table>{% else %}<p class="empty">No row has failed.</p>{% endif %}

<h2>Sample of answers</h2>
{% if d.sample %}<table class="sample"><tr><th class="num">row</th>
{% for col in input_columns %}<th>{{ col }}</th>{% endfor %}{% if not input_columns %}<th>prompt sent</th>{% endif %}<th>answer</th><th>via</th></tr>
{% for r in d.sample %}<tr><td class="num">{{ r.label }}</td>
{% for col in input_columns %}<td class="wrap">{{ r.inputs.get(col, "") }}</td>{% endfor %}
{% if not input_columns %}<td class="wrap">{{ r.prompt or "(input not available)" }}</td>{% endif %}
<td class="wrap">{{ r.answer }}</td><td>{{ r.via or "" }}</td></tr>{% endfor %}
</table>{% else %}<p class="empty">No answers yet.</p>{% endif %}

<h2>Prompt</h2>
{% if j.system %}<pre class="prompt">system: {{ j.system }}</pre>{% endif %}
<pre class="prompt">{{ j.prompt }}</pre>
<footer>rowprompt report of job {{ j.id }}, read from the ledger at {{ d.generated_at | when }}.</footer>
"""
