"""The web page of the tree: one HTML document with its style and script inline.

It loads nothing from elsewhere. Every second it asks `/api/tree` (status, intensity, last
failures) and `/api/events?after=N` (new events) and redraws; text from the tree is set
with `textContent`, never parsed as HTML. The start/stop/restart buttons appear only when
the server has a token; the token typed in the page is kept in the tab's sessionStorage
and sent in the X-Supervisor-Token header.
"""

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>otp-supervisor</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em 0; }
#meta { color: #666; margin-bottom: .8em; }
table { border-collapse: collapse; background: white; box-shadow: 0 1px 2px #0002; }
th, td { padding: .25em .7em; text-align: left; border-bottom: 1px solid #eee;
         white-space: nowrap; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; border-radius: 3px; padding: 0 .4em; }
.running { background: #d9f5dd; color: #136c1f; }
.restarting, .starting, .stopping { background: #fff2c6; color: #7a5a00; }
.stopped { background: #eee; color: #555; }
.circuit_open, .abandoned { background: #fbd5d5; color: #9b1c1c; }
.open { color: #9b1c1c; font-weight: 600; } .half_open { color: #7a5a00; font-weight: 600; }
.warn { color: #9b1c1c; }
#events { margin-top: 1.2em; background: #1e1e1e; color: #ddd; padding: .6em; height: 16em;
          overflow-y: auto; font: 12px/1.4 ui-monospace, monospace; }
#controls { margin: .6em 0; } #controls[hidden] { display: none; }
button { font-size: 12px; margin-right: .2em; }
#error { color: #9b1c1c; }
</style>
</head>
<body>
<h1 id="title">otp-supervisor</h1>
<div id="meta">connecting...</div>
<div id="controls" hidden>token: <input id="token" type="password" size="30">
  <span id="result"></span></div>
<div id="error"></div>
<table>
<thead><tr><th>path</th><th>kind</th><th>state</th><th>pid</th><th>uptime</th>
<th>restarts</th><th>RSS</th><th>circuit</th><th>intensity</th><th>last failure</th>
<th class="btn"></th></tr></thead>
<tbody id="tree"></tbody>
</table>
<div id="events"></div>
<script>
"use strict";
let after = 0, buttons = false;
const $ = (id) => document.getElementById(id);
const tokenBox = $("token");
tokenBox.value = sessionStorage.getItem("supervisor-token") || "";
tokenBox.addEventListener("change", () => sessionStorage.setItem("supervisor-token", tokenBox.value));

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? h + "h" + String(m).padStart(2, "0") + "m" : m + "m" + String(sec).padStart(2, "0") + "s";
}
function* walk(node, depth) {
  yield [node, depth];
  for (const c of node.children || []) yield* walk(c, depth + 1);
}
async function act(action, path) {
  const r = await fetch("/api/control", {method: "POST",
    headers: {"Content-Type": "application/json", "X-Supervisor-Token": tokenBox.value},
    body: JSON.stringify({action, path})});
  const body = await r.json();
  $("result").textContent = r.ok ? path + ": " + action + " done" : "refused: " + body.error;
  refresh();
}
function draw(data) {
  const st = data.status, now = data.time;
  buttons = data.buttons;
  $("controls").hidden = !buttons;
  $("title").textContent = "otp-supervisor: " + st.id;
  $("meta").textContent = "root pid " + st.pid + " | updated " + new Date(now * 1000).toLocaleTimeString()
    + (buttons ? " | control enabled (token required)" : " | read-only");
  const body = $("tree");
  const rows = [];
  for (const [n, depth] of walk(st, 0)) {
    const row = document.createElement("tr");
    row.dataset.path = n.path;
    cell(row, "\\u00a0\\u00a0".repeat(depth) + (n.path || "/"));
    cell(row, n.kind);
    const s = document.createElement("td"); const span = document.createElement("span");
    span.textContent = n.state; span.className = "state " + n.state; s.appendChild(span); row.appendChild(s);
    cell(row, n.pid === null || n.pid === undefined ? "-" : String(n.pid), "num");
    cell(row, duration(n.uptime), "num");
    cell(row, String(n.restarts || 0), "num");
    cell(row, n.memory_mb === null || n.memory_mb === undefined ? "-" : n.memory_mb.toFixed(1) + "M", "num");
    let circuit = n.kind === "supervisor" ? "-" : (n.circuit || "closed");
    if (n.circuit === "open" && n.retry_at) circuit += " (trial in " + Math.max(0, Math.round(n.retry_at - now)) + "s)";
    cell(row, circuit, n.circuit || "");
    const sup = data.supervisors[n.path];
    cell(row, n.kind === "supervisor" && sup ? sup.recent_restarts + "/" + sup.max_restarts + " in " + sup.max_seconds + "s" : "",
         sup && sup.recent_restarts >= sup.max_restarts && sup.max_restarts > 0 ? "warn" : "");
    const f = data.last_failures[n.path];
    cell(row, f ? f.category + " \\u2192 " + f.action : "", f ? "warn" : "");
    const b = cell(row, "", "btn");
    if (buttons && n.path) {
      for (const a of ["start", "stop", "restart"]) {
        const btn = document.createElement("button");
        btn.textContent = a; btn.dataset.action = a;
        btn.addEventListener("click", () => act(a, n.path));
        b.appendChild(btn);
      }
    }
    rows.push(row);
  }
  body.replaceChildren(...rows);
}
function addEvents(events) {
  const pane = $("events");
  for (const e of events) {
    after = Math.max(after, e.seq);
    const line = document.createElement("div");
    const m = e.metadata, t = e.time ? new Date(e.time * 1000).toLocaleTimeString() : "";
    const facts = Object.entries(m).filter(([k, v]) => v !== null && !["path", "id", "supervisor"].includes(k))
      .map(([k, v]) => k + "=" + v).join(" ");
    line.textContent = t + " " + e.name + " " + (e.path || "/") + " " + facts;
    line.className = "event";
    pane.appendChild(line);
  }
  while (pane.childElementCount > 200) pane.firstChild.remove();
  if (events.length) pane.scrollTop = pane.scrollHeight;
}
async function refresh() {
  try {
    const [tree, events] = await Promise.all([
      fetch("/api/tree").then((r) => r.json()),
      fetch("/api/events?after=" + after).then((r) => r.json())]);
    if (tree.error) throw new Error(tree.error);
    $("error").textContent = "";
    draw(tree);
    addEvents(events.events || []);
  } catch (err) {
    $("error").textContent = "cannot reach the tree: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
