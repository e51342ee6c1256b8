"""The search page served at ``/``: one HTML document with a little JavaScript, no build step
and no external assets. It calls ``POST /search`` with the query box's text and shows the
hits with their scores. The API key (when the server has one) is typed into the key field
and kept in the browser's ``localStorage``; ``/?q=QUERY`` runs a query on load and
``#key=KEY`` in the URL fills the key field (the fragment never reaches the server)."""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>textcl search</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; }
  #q { flex: 1 1 20rem; font-size: 1.1rem; padding: .4rem; }
  #key { flex: 0 1 12rem; padding: .4rem; }
  #k { width: 4rem; padding: .4rem; }
  ol { padding-left: 1.5rem; }
  li.hit { margin: .6rem 0; }
  .score { font-family: monospace; color: #555; margin-right: .6rem; }
  .id { color: #888; font-size: .85rem; margin-left: .4rem; }
  #status { color: #555; }
  #status.error { color: #b00020; }
</style>
</head>
<body>
<h1>textcl search</h1>
<p id="info"></p>
<form id="form">
  <input id="q" name="q" type="search" placeholder="type a query" autofocus>
  <input id="k" name="k" type="number" min="1" max="100" value="10" title="hits">
  <input id="key" name="key" type="password" placeholder="API key (if any)" autocomplete="off">
  <button type="submit">Search</button>
</form>
<p id="status"></p>
<ol id="hits"></ol>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("key").value.trim();
  if (key) { h["Authorization"] = "Bearer " + key; }
  return h;
}
function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}
async function showInfo() {
  try {
    const r = await fetch("/info", {headers: headers()});
    if (!r.ok) { return; }
    const info = await r.json();
    const rows = info.index ? info.index.rows + " sentences" : "no index loaded";
    $("info").textContent = info.model_name + " (" + info.dimension + "-d), " + rows;
  } catch (e) { /* the search reports errors */ }
}
async function search(query) {
  const hits = $("hits");
  hits.replaceChildren();
  if (!query.trim()) { status("type a query", false); return; }
  status("searching...", false);
  const t0 = performance.now();
  let r;
  try {
    r = await fetch("/search", {
      method: "POST", headers: headers(),
      body: JSON.stringify({query: query, top_k: Number($("k").value) || 10}),
    });
  } catch (e) { status("error: " + e, true); return; }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = typeof body.error === "string" ? body.error : JSON.stringify(body);
    status("error " + r.status + ": " + msg, true);
    return;
  }
  const result = body.results[0];
  for (const hit of result.hits) {
    const li = document.createElement("li");
    li.className = "hit";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(4);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = hit.text;
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = hit.id;
    li.append(score, text, id);
    hits.append(li);
  }
  const ms = Math.round(performance.now() - t0);
  status(result.hits.length + " hits in " + ms + " ms", false);
}
$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("textcl-key", $("key").value);
  const url = new URL(window.location);
  url.searchParams.set("q", $("q").value);
  history.replaceState(null, "", url);
  search($("q").value);
});
const params = new URLSearchParams(window.location.search);
const fragment = new URLSearchParams(window.location.hash.slice(1));
$("key").value = fragment.get("key") || localStorage.getItem("textcl-key") || "";
if (params.get("k")) { $("k").value = params.get("k"); }
showInfo();
if (params.get("q")) {
  $("q").value = params.get("q");
  search(params.get("q"));
}
</script>
</body>
</html>
"""
"""The page (a Python string: no package data to install)."""
