"""The live view's own pieces: the jobs table, the nav bar and the small polling scripts.

The scripts only fetch this server's JSON (same origin, the token in a header) and swap in
HTML the server rendered, so the live page and the report file draw exactly the same thing.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from rowprompt.report.data import JobSummary
from rowprompt.report.html import money


def head(token: str, version: str = "") -> str:
    """Tags the scripts read: the access token for their requests, the body's version."""
    tags = f'<meta name="rowprompt-token" content="{escape(token)}">'
    if version:
        tags += f'<meta name="rowprompt-version" content="{escape(version)}">'
    return tags


def nav() -> str:
    """The links in the header bar (the cookie set on first visit carries the token)."""
    return '<a href="/">Jobs</a><span id="live" class="sub" style="margin:0 0 0 auto"></span>'


def jobs_table(summaries: list[JobSummary]) -> str:
    """The jobs list, newest first, with a progress bar per job."""
    if not summaries:
        return '<p class="empty">No jobs in this ledger yet.</p>'
    rows = []
    for s in summaries:
        c, j = s.counts, s.job
        pct = 100.0 * c.finished / c.total if c.total else 0.0
        failed = c.statuses.get("failed", 0) + c.statuses.get("skipped", 0)
        created = datetime.fromtimestamp(j.created_at).strftime("%Y-%m-%d %H:%M")
        rows.append(
            f'<tr data-job="{escape(j.id)}"><td><a href="/jobs/{escape(j.id)}"><code>'
            f"{escape(j.id)}</code></a></td><td>{created}</td>"
            f'<td><span class="badge {escape(s.state)}">{escape(s.state)}</span></td>'
            f"<td>{escape(j.mode)}</td><td>{escape(j.model)}</td>"
            f'<td><span class="progress"><span style="width:{pct:.1f}%"></span></span>'
            f"{c.finished:,}/{c.total:,}</td>"
            f'<td class="num">{failed:,}</td><td class="num">{money(c.cost_usd)}</td>'
            f'<td class="wrap">{escape(j.input_path or "a DataFrame")}</td></tr>'
        )
    return (
        '<table class="jobs"><tr><th>job</th><th>created</th><th>state</th><th>mode</th>'
        '<th>model</th><th>progress</th><th class="num">failed</th><th class="num">cost</th>'
        "<th>input</th></tr>" + "".join(rows) + "</table>"
    )


_COMMON = """
const TOKEN = document.querySelector('meta[name="rowprompt-token"]').content;
async function getJSON(url, options) {
  const response = await fetch(url, Object.assign({
    headers: {'X-Rowprompt-Token': TOKEN}, credentials: 'same-origin', cache: 'no-store'
  }, options || {}));
  const data = await response.json();
  if (!response.ok) { throw new Error(data.message || data.error || response.statusText); }
  return data;
}
function stamp(text) {
  const live = document.getElementById('live');
  if (live) { live.textContent = text; }
}
"""

JOBS_SCRIPT = (
    "<script>"
    + _COMMON
    + """
async function refresh() {
  try {
    const data = await getJSON('/api/jobs');
    document.getElementById('jobs').innerHTML = data.html;
    stamp('updated ' + new Date().toLocaleTimeString());
  } catch (err) { stamp('cannot reach the server: ' + err.message); }
  setTimeout(refresh, 2000);
}
setTimeout(refresh, 2000);
</script>"""
)

JOB_SCRIPT = (
    "<script>"
    + _COMMON
    + """
const JOB = location.pathname.split('/').filter(Boolean)[1];
let version = document.querySelector('meta[name="rowprompt-version"]').content;
function message(text) { document.getElementById('message').textContent = text; }
async function refresh() {
  let delay = 2000;
  try {
    const data = await getJSON('/api/jobs/' + JOB);
    if (data.version !== version) {
      document.getElementById('job-body').innerHTML = data.body;
      version = data.version;
    }
    // A finished job rarely changes again: look less often.
    if (data.state !== 'running' && data.state !== 'waiting') { delay = 10000; }
    stamp('updated ' + new Date().toLocaleTimeString());
  } catch (err) { stamp('cannot reach the server: ' + err.message); }
  setTimeout(refresh, delay);
}
async function act(name, question) {
  if (question && !confirm(question)) { return; }
  const buttons = document.querySelectorAll('.actions button');
  buttons.forEach(b => b.disabled = true);
  message(name === 'cancel' ? 'cancelling…' : 'collecting…');
  try {
    const data = await getJSON('/api/jobs/' + JOB + '/' + name, {method: 'POST'});
    message(name + ': ' + data.message);
  } catch (err) { message(name + ' failed: ' + err.message); }
  buttons.forEach(b => b.disabled = false);
}
document.getElementById('collect').addEventListener('click', () => act('collect'));
document.getElementById('cancel').addEventListener('click',
  () => act('cancel', 'Cancel this job? Finished rows are kept; the rest are skipped.'));
setTimeout(refresh, 2000);
</script>"""
)
