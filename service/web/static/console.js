// imgsim console: plain JavaScript over the HTTP API (/v1/...), no build step.
// Every label, key and metadata value is text: it goes into the page with textContent (or
// an attribute), never as HTML.
"use strict";

const KEY_STORE = "imgsim.apiKey";  // sessionStorage: this tab only
const state = { info: null, collections: [], defaultCollection: "", kinds: [], jobsTimer: null,
                browseOffset: 0, searchFile: null, verifyFiles: { a: null, b: null } };

// -- small helpers ----------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function splitList(s) { return s.split(",").map((x) => x.trim()).filter(Boolean); }

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, { method = "GET", body = null, json = null, raw = false } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  if (json !== null) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(path, { method, headers, body });
  if (!r.ok) {
    let code = "", message = r.statusText;
    try { const e = (await r.json()).error; code = e.code; message = e.message; } catch (_) { /* not JSON */ }
    if (r.status === 401) askForKey(message);
    throw new ApiError(r.status, code, message);
  }
  return raw ? r : r.json();
}

async function blobUrl(path) {
  const r = await api(path, { raw: true });
  return URL.createObjectURL(await r.blob());
}

async function dataUrl(path) {
  const blob = await (await api(path, { raw: true })).blob();
  return new Promise((resolve) => { const f = new FileReader(); f.onload = () => resolve(f.result); f.readAsDataURL(blob); });
}

function thumbPath(collection, key, size = 128) {
  return `/v1/collections/${encodeURIComponent(collection)}/thumbnail?key=${encodeURIComponent(key)}&size=${size}`;
}

function authImg(path, attrs = {}) {
  const img = el("img", { alt: "", ...attrs });
  blobUrl(path).then((u) => { img.src = u; }, () => { img.alt = "(no image)"; });
  return img;
}

function showError(target, e) { target.textContent = e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e); }

function banner(text) { const b = $("banner"); b.textContent = text; b.hidden = !text; }

function metaText(meta) {
  return Object.entries(meta || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
}

function parseMeta(s) {
  const out = [];
  for (const part of splitList(s)) {
    if (!part.includes("=")) throw new Error(`metadata filter must be name=value, got ${part}`);
    out.push(part);
  }
  return out;
}

// -- API key ----------------------------------------------------------------------------
function askForKey(why) {
  sessionStorage.removeItem(KEY_STORE);
  $("main").hidden = true;
  $("key-panel").hidden = false;
  $("key-error").textContent = why && state.info && apiKeyWasTried ? why : "";
  $("key-input").focus();
}
let apiKeyWasTried = false;

$("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key-input").value.trim());
  apiKeyWasTried = true;
  $("key-input").value = "";
  await start();
});
$("key-button").addEventListener("click", () => askForKey(""));

// -- tabs -------------------------------------------------------------------------------
const TAB_OPEN = { index: loadIndex, jobs: loadJobs, map: loadMapJobs };
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => openTab(b.dataset.tab));
}
function openTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== "tab-" + name;
  if (TAB_OPEN[name]) TAB_OPEN[name]();
  if (name !== "jobs" && state.jobsTimer) { clearTimeout(state.jobsTimer); state.jobsTimer = null; }
}

// -- start ------------------------------------------------------------------------------
async function start() {
  try {
    state.info = await api("/v1/info");
  } catch (e) { banner("cannot reach the server: " + e.message); return; }
  const i = state.info;
  $("server-status").textContent = !i.serving ? "loading model and index…"
    : `serving${i.model_version ? " " + i.model_version : ""} · gRPC :${i.grpc_port}`;
  $("key-button").hidden = !i.require_api_key;
  if (i.require_api_key && !apiKey()) { askForKey(""); return; }
  try {
    const c = await api("/v1/collections");
    state.collections = c.collections; state.defaultCollection = c.default_collection;
  } catch (e) {
    if (e.status !== 401) banner(e.message);
    return;
  }
  $("key-panel").hidden = true;
  $("main").hidden = false;
  banner("");
  for (const sel of document.querySelectorAll("select.collections")) {
    sel.replaceChildren(...state.collections.filter((c) => c.served || c.count).map((c) =>
      el("option", { value: c.name, text: `${c.name} (${c.count})` })));
    sel.value = state.defaultCollection;
  }
  browse(0);
}

// -- drop zones -------------------------------------------------------------------------
function dropZone(zone, input, onFile) {
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault(); zone.classList.remove("over");
    if (ev.dataTransfer.files.length) onFile(ev.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) onFile(input.files[0]); });
}

function preview(img, file) {
  if (!file) { img.hidden = true; return; }
  img.src = URL.createObjectURL(file); img.hidden = false;
}

// -- search -----------------------------------------------------------------------------
dropZone($("search-drop"), $("search-file"), (f) => {
  state.searchFile = f; $("search-key").value = ""; preview($("search-preview"), f); runSearch();
});
$("search-key").addEventListener("input", () => { state.searchFile = null; preview($("search-preview"), null); });
$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(); });

async function runSearch() {
  const info = $("search-info"), out = $("search-results");
  const fd = new FormData();
  const collection = $("search-collection").value;
  try {
    if (state.searchFile) fd.append("image", state.searchFile);
    else if ($("search-key").value.trim()) fd.append("key", $("search-key").value.trim());
    else { info.textContent = "drop an image or give a key"; return; }
    fd.append("collection", collection);
    fd.append("k", $("search-k").value || "12");
    for (const l of splitList($("search-labels").value)) fd.append("label", l);
    for (const m of parseMeta($("search-meta").value)) fd.append("meta", m);
    if ($("search-maxd").value) fd.append("max_distance", $("search-maxd").value);
    for (const k of splitList($("search-exclude").value)) fd.append("exclude_key", k);
  } catch (e) { showError(info, e); return; }
  info.textContent = "searching…";
  const t0 = performance.now();
  try {
    const r = await api("/v1/search", { method: "POST", body: fd });
    info.textContent = `${r.hits.length} hits · index ${r.index_version} · ${Math.round(performance.now() - t0)} ms` + faceNote(r.query_face, "the query");
    out.replaceChildren(...r.hits.map((h) => hitCard(h, collection)));
    document.body.dataset.searchDone = String(Date.now());
  } catch (e) { showError(info, e); out.replaceChildren(); }
}

// a face model found no face in an uploaded image: it answered from its fallback crop
function faceNote(outcome, what) {
  return outcome === "FACE_OUTCOME_NOT_FOUND" ? ` · ⚠ no face found in ${what}: the model's fallback crop was compared, a weaker answer` : "";
}

function hitCard(h, collection) {
  const card = el("div", { class: "card hit", title: "search from this image" },
    authImg(thumbPath(collection, h.key), { class: "thumb" }),
    el("div", { class: "label", text: h.label || "(no label)" }),
    el("div", { class: "sim", text: `#${h.rank} · similarity ${h.similarity.toFixed(3)} · distance ${h.distance.toFixed(3)}` }),
    el("div", { class: "key", text: h.key }),
    el("div", { class: "meta", text: metaText(h.metadata) }));
  card.addEventListener("click", () => searchFromKey(h.key, collection));
  return card;
}

function searchFromKey(key, collection) {
  openTab("search");
  state.searchFile = null; preview($("search-preview"), null);
  $("search-key").value = key; $("search-collection").value = collection;
  runSearch();
}

// -- verify -----------------------------------------------------------------------------
for (const side of ["a", "b"]) {
  dropZone($("verify-drop-" + side), $("verify-file-" + side), (f) => {
    state.verifyFiles[side] = f; $("verify-key-" + side).value = ""; preview($("verify-preview-" + side), f);
  });
  $("verify-key-" + side).addEventListener("input", () => { state.verifyFiles[side] = null; preview($("verify-preview-" + side), null); });
}
$("verify-form").addEventListener("submit", (ev) => { ev.preventDefault(); runVerify(); });

function verifyCollection() { return $("verify-collection").value || state.defaultCollection; }

async function imageBlob(side) {
  if (state.verifyFiles[side]) return state.verifyFiles[side];
  const key = $("verify-key-" + side).value.trim();
  if (!key) throw new Error(`image ${side.toUpperCase()} is missing`);
  const r = await api(`/v1/collections/${encodeURIComponent(verifyCollection())}/bytes?key=${encodeURIComponent(key)}`, { raw: true });
  return r.blob();
}

async function runVerify() {
  const status = $("verify-explain-status");
  $("verify-heatmap").hidden = true; status.textContent = "";
  const fd = new FormData();
  const identity = $("verify-identity").value.trim();
  for (const side of identity ? ["a"] : ["a", "b"]) {
    if (state.verifyFiles[side]) fd.append(side, state.verifyFiles[side]);
    else if ($("verify-key-" + side).value.trim()) fd.append(side + "_key", $("verify-key-" + side).value.trim());
  }
  if (identity) { fd.append("identity", identity); fd.append("identity_collection", verifyCollection()); }
  fd.append("collection", verifyCollection());
  let r;
  try { r = await api("/v1/verify", { method: "POST", body: fd }); } catch (e) {
    $("verify-result").hidden = false; showError($("verify-verdict"), e); $("verify-verdict").className = "verdict"; return;
  }
  $("verify-result").hidden = false;
  const v = $("verify-verdict");
  v.textContent = r.same ? "SAME" : "DIFFERENT";
  v.className = "verdict " + (r.same ? "same" : "different");
  const top = Math.max(2 * r.threshold, r.distance * 1.1, 1e-6);
  $("verify-bar").style.left = `${Math.min(100, 100 * r.distance / top)}%`;
  $("verify-thr").style.left = `${100 * r.threshold / top}%`;
  $("verify-numbers").textContent = `distance ${r.distance.toFixed(4)} ${r.same ? "≤" : ">"} calibrated threshold ${r.threshold.toFixed(4)} · cosine similarity ${r.similarity.toFixed(4)} · model ${r.model_version}`
    + (identity ? ` · identity ${identity}: ${r.enrolled_images} enrolled images, nearest ${r.nearest_key}, mean distance ${r.mean_distance.toFixed(4)}` : "")
    + faceNote(r.face_a, "image A") + faceNote(r.face_b, "image B");
  if (identity) return;  // the heatmap explains a pair
  if ($("verify-explain").checked) explainPair(status).catch((e) => showError(status, e));
}

async function explainPair(status) {
  if (!state.info.jobs) { status.textContent = "this server runs no jobs: no heatmap"; return; }
  status.textContent = "computing the occlusion heatmap (a verify job)…";
  const paths = {};
  for (const side of ["a", "b"]) {
    const blob = await imageBlob(side), key = $("verify-key-" + side).value.trim();
    const fd = new FormData(); fd.append("image", blob, blob.name || key.split("/").pop() || side);
    try { paths[side] = (await api("/v1/jobs/inputs", { method: "POST", body: fd })).path; } catch (e) {
      if (e.status === 403) { status.textContent = "the heatmap runs as a job, which needs a write key: " + e.message; return; }
      throw e;
    }
  }
  const job = await api("/v1/jobs", { method: "POST", json: { kind: "verify", params: { a: paths.a, b: paths.b } } });
  const done = await waitJob(job.id, (j) => { status.textContent = `job ${j.id}: ${j.state} ${Math.round(100 * j.progress)}% ${j.message}`; });
  if (done.state !== "succeeded") { status.textContent = `job ${done.id} ${done.state}: ${done.error}`; return; }
  const art = done.artifacts.find((a) => a.name === "why_match.png");
  $("verify-heatmap-img").src = await blobUrl(art.url);
  $("verify-heatmap-caption").textContent = art.caption + ` (job ${done.id})`;
  $("verify-heatmap").hidden = false;
  status.textContent = "";
}

async function waitJob(id, onProgress) {
  for (;;) {
    const j = await api(`/v1/jobs/${id}`);
    if (onProgress) onProgress(j);
    if (["succeeded", "failed", "cancelled"].includes(j.state)) return j;
    await new Promise((r) => setTimeout(r, 500));
  }
}

// -- browse -----------------------------------------------------------------------------
$("browse-form").addEventListener("submit", (ev) => { ev.preventDefault(); browse(0); });
$("browse-prev").addEventListener("click", () => browse(Math.max(0, state.browseOffset - pageSize())));
$("browse-next").addEventListener("click", () => browse(state.browseOffset + pageSize()));
function pageSize() { return Math.max(1, Math.min(500, parseInt($("browse-limit").value, 10) || 24)); }

async function browse(offset) {
  const collection = $("browse-collection").value || state.defaultCollection;
  const q = new URLSearchParams({ offset: String(offset), limit: String(pageSize()) });
  for (const l of splitList($("browse-labels").value)) q.append("label", l);
  try { for (const m of parseMeta($("browse-meta").value)) q.append("meta", m); } catch (e) { showError($("browse-page"), e); return; }
  if ($("browse-prefix").value) q.set("key_prefix", $("browse-prefix").value);
  let page;
  try { page = await api(`/v1/collections/${encodeURIComponent(collection)}/images?${q}`); } catch (e) { showError($("browse-page"), e); return; }
  state.browseOffset = offset;
  const n = pageSize(), pages = Math.max(1, Math.ceil(page.total / n));
  $("browse-page").textContent = `page ${Math.floor(offset / n) + 1} of ${pages} · ${page.total} images`;
  $("browse-prev").disabled = offset === 0;
  $("browse-next").disabled = page.next_offset === null;
  $("browse-grid").replaceChildren(...page.images.map((im) => {
    const card = el("div", { class: "card item" }, authImg(thumbPath(collection, im.key), { class: "thumb" }),
      el("div", { class: "label", text: im.label || "(no label)" }), el("div", { class: "key", text: im.key }),
      el("div", { class: "meta", text: metaText(im.metadata) }));
    card.addEventListener("click", () => showRecord(collection, im));
    return card;
  }));
}

function showRecord(collection, im) {
  const box = $("browse-record");
  const rows = [["key", im.key], ["label", im.label], ["collection", im.collection], ["id", im.id],
    ["media type", im.media_type], ["sha256", im.sha256], ["storage", im.storage], ["created", im.created_at],
    ...Object.entries(im.metadata).map(([k, v]) => ["metadata " + k, v])];
  const big = authImg(`/v1/collections/${encodeURIComponent(collection)}/bytes?key=${encodeURIComponent(im.key)}`, { class: "big" });
  box.replaceChildren(big, el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) })))),
    el("button", { type: "button", text: "Search from this image", onclick: () => searchFromKey(im.key, collection) }));
  box.hidden = false;
}

// -- index ------------------------------------------------------------------------------
async function loadIndex() {
  try {
    const c = await api("/v1/collections");
    $("collections-table").replaceChildren(el("tr", {}, ...["collection", "images", "served", "index version", "vectors"].map((h) => el("th", { text: h }))),
      ...c.collections.map((x) => el("tr", {}, ...[x.name, x.count, x.served ? "yes" : "no", x.index_version, x.indexed].map((v) => el("td", { text: String(v) })))));
    const i = await api("/v1/index");
    const rows = [["model", i.model_version], ["index version", i.index_version], ["factory", i.factory], ["metric", i.metric],
      ["dimension", i.dimension], ["count", i.count], ["measured recall@10", i.recall_at_10 === null ? "not measured" : i.recall_at_10.toFixed(4)],
      ["verify threshold", i.threshold.toFixed(4)], ["checkpoint sha256", i.checkpoint_sha256], ["created", i.created_at],
      ["face pipeline", i.face], ["search params", JSON.stringify(i.search_params)]];
    $("index-table").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
  } catch (e) { showError($("index-table"), e); }
}

// -- jobs -------------------------------------------------------------------------------
async function loadJobs() {
  if (!state.kinds.length) {
    try { state.kinds = (await api("/v1/jobs/kinds")).kinds; } catch (e) { showError($("job-error"), e); return; }
    $("job-kind").replaceChildren(...state.kinds.map((k) => el("option", { value: k.name, text: k.name })));
    $("job-kind").value = "tsne";
    jobForm();
  }
  refreshJobs();
}
$("job-kind").addEventListener("change", jobForm);

function jobForm() {
  const kind = state.kinds.find((k) => k.name === $("job-kind").value);
  $("job-help").textContent = kind.help;
  $("job-params").replaceChildren(...kind.params.map((p) => {
    const input = el("input", { name: p.name, "data-type": p.type, placeholder: p.default === null || p.default === "" ? "" : JSON.stringify(p.default) });
    if (p.type === "bool") { input.type = "checkbox"; if (p.default) input.checked = true; }
    return el("label", {}, `${p.name} (${p.type}${p.required ? ", required" : ""})`, input, el("span", { class: "help", text: p.help }));
  }));
}

function paramValue(input) {
  const t = input.dataset.type, v = input.value.trim();
  if (t === "bool") return input.checked;
  if (!v) return undefined;
  if (t === "int") { const n = Number(v); if (!Number.isInteger(n)) throw new Error(`${input.name} must be an integer`); return n; }
  if (t === "float") { const n = Number(v); if (Number.isNaN(n)) throw new Error(`${input.name} must be a number`); return n; }
  if (t.startsWith("list")) return v.startsWith("[") ? JSON.parse(v) : splitList(v);
  return v;
}

$("job-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("job-error").textContent = "";
  const kind = state.kinds.find((k) => k.name === $("job-kind").value);
  const params = {};
  try {
    for (const input of $("job-params").querySelectorAll("input")) {
      const p = kind.params.find((x) => x.name === input.name);
      const v = paramValue(input);
      if (v !== undefined && !(p.type === "bool" && v === Boolean(p.default))) params[input.name] = v;
    }
    const job = await api("/v1/jobs", { method: "POST", json: { kind: kind.name, params } });
    await refreshJobs();
    showJob(job.id);
  } catch (e) { showError($("job-error"), e); }
});

async function refreshJobs() {
  if (state.jobsTimer) { clearTimeout(state.jobsTimer); state.jobsTimer = null; }
  let jobs;
  try { jobs = (await api("/v1/jobs?limit=30")).jobs; } catch (e) { showError($("job-error"), e); return; }
  $("jobs-table").replaceChildren(el("tr", {}, ...["id", "kind", "state", "progress", "message", "created"].map((h) => el("th", { text: h }))),
    ...jobs.map((j) => {
      const bar = el("div", { class: "progress" }, el("div"));
      bar.firstChild.style.width = `${Math.round(100 * j.progress)}%`;
      const tr = el("tr", { class: "clickable job-row", "data-id": String(j.id), "data-state": j.state },
        el("td", { text: String(j.id) }), el("td", { text: j.kind }), el("td", { text: j.state }), el("td", {}, bar),
        el("td", { text: j.error || j.message }), el("td", { text: j.created_at.replace("T", " ").slice(0, 19) }));
      tr.addEventListener("click", () => showJob(j.id));
      return tr;
    }));
  if (jobs.some((j) => j.state === "queued" || j.state === "running")) {
    state.jobsTimer = setTimeout(() => { refreshJobs(); const open = $("job-detail").dataset.id; if (open) showJob(Number(open), true); }, 1000);
  }
}

async function showJob(id, quiet = false) {
  const box = $("job-detail");
  let j;
  try { j = await api(`/v1/jobs/${id}`); } catch (e) { if (!quiet) showError(box, e); return; }
  if (quiet && box.dataset.state === j.state && j.state !== "running") return;
  box.dataset.id = String(id); box.dataset.state = j.state;
  const head = el("p", {}, el("strong", { text: `job ${j.id} · ${j.kind} · ${j.state}` }), ` ${Math.round(100 * j.progress)}% ${j.message}`);
  const parts = [head, el("pre", { text: JSON.stringify(j.params, null, 1) })];
  if (j.error) parts.push(el("p", { class: "error", text: j.error }));
  if (j.state === "queued" || j.state === "running") {
    parts.push(el("button", { type: "button", text: "Cancel", onclick: async () => { await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); refreshJobs(); } }));
  }
  const files = el("ul");
  for (const a of j.artifacts) {
    const link = el("button", { type: "button", class: "link", text: a.name });
    link.addEventListener("click", async () => {
      if (a.name.endsWith(".html")) await showReport(j, a); else window.open(await blobUrl(a.url), "_blank");
    });
    files.append(el("li", {}, link, ` ${a.media_type} · ${a.caption}`));
  }
  if (j.artifacts.length) parts.push(el("h2", { text: "Artifacts" }), files);
  const report = j.artifacts.find((a) => a.name === "report.html");
  if (report) parts.push(el("button", { type: "button", id: "open-report", text: "Open the report", onclick: () => showReport(j, report) }));
  if (j.kind === "tsne" && j.state === "succeeded") parts.push(" ", el("button", { type: "button", text: "Open the interactive map", onclick: () => { openTab("map"); openMap(j.id); } }));
  parts.push(el("div", { id: "report-view" }));
  box.replaceChildren(...parts);
  box.hidden = false;
}

// The report is rebuilt from its text and images only (headings, paragraphs, figures, tables):
// nothing of its markup runs here, and its images are fetched with the API key.
const REPORT_TAGS = new Set(["H1", "H2", "P", "FIGURE", "FIGCAPTION", "TABLE", "CAPTION", "TR", "TD", "TH", "TBODY", "THEAD"]);
async function showReport(job, art) {
  const html = await (await api(art.url, { raw: true })).text();
  const doc = new DOMParser().parseFromString(html, "text/html");
  const base = art.url.slice(0, art.url.lastIndexOf("/") + 1);
  async function rebuild(node) {
    if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.textContent);
    if (node.nodeType !== Node.ELEMENT_NODE) return null;
    if (node.tagName === "IMG") {
      const src = node.getAttribute("src") || "";
      const img = el("img", { alt: node.getAttribute("alt") || "" });
      if (/^[\w./-]+$/.test(src) && !src.includes("..")) img.src = await dataUrl(base + src);
      return img;
    }
    if (!REPORT_TAGS.has(node.tagName)) return null;
    const out = document.createElement(node.tagName.toLowerCase());
    if (node.classList.contains("status")) out.className = "error";
    for (const c of node.childNodes) { const r = await rebuild(c); if (r) out.append(r); }
    return out;
  }
  const view = el("div", { class: "report", id: "report" });
  for (const c of doc.body.childNodes) { const r = await rebuild(c); if (r) view.append(r); }
  $("report-view").replaceChildren(view);
}

// -- t-SNE map --------------------------------------------------------------------------
async function loadMapJobs() {
  let jobs;
  try { jobs = (await api("/v1/jobs?kind=tsne&state=succeeded&limit=50")).jobs; } catch (e) { showError($("map-status"), e); return; }
  $("map-job").replaceChildren(...jobs.map((j) => el("option", { value: String(j.id), text: `job ${j.id} (${j.params.collection || state.defaultCollection}: ${j.params.sample} points, perplexity ${j.params.perplexity})` })));
}
$("map-open").addEventListener("click", () => { if ($("map-job").value) openMap(Number($("map-job").value)); });
$("map-run").addEventListener("click", async () => {
  const status = $("map-status");
  try {
    const params = { sample: Number($("map-sample").value), perplexity: Number($("map-perplexity").value) };
    const collection = $("map-collection").value;
    if (collection && collection !== state.defaultCollection) params.collection = collection;
    const job = await api("/v1/jobs", { method: "POST", json: { kind: "tsne", params } });
    const done = await waitJob(job.id, (j) => { status.textContent = `job ${j.id}: ${j.state} ${Math.round(100 * j.progress)}% ${j.message}`; });
    if (done.state !== "succeeded") { status.textContent = `job ${done.id} ${done.state}: ${done.error}`; return; }
    await loadMapJobs(); $("map-job").value = String(done.id);
    openMap(done.id);
  } catch (e) { showError(status, e); }
});

function parseCsv(text) {
  const rows = []; let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (ch === '"') quoted = false; else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(field); field = ""; }
    else if (ch === "\n" || ch === "\r") { if (ch === "\r" && text[i + 1] === "\n") i++; row.push(field); rows.push(row); row = []; field = ""; }
    else field += ch;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  const head = rows.shift();
  return rows.filter((r) => r.length === head.length).map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])));
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"];

async function openMap(jobId) {
  const status = $("map-status");
  const job = await api(`/v1/jobs/${jobId}`);
  const csv = job.artifacts.find((a) => a.name === "tsne.csv");
  if (!csv) { status.textContent = `job ${jobId} has no tsne.csv`; return; }
  const pts = parseCsv(await (await api(csv.url, { raw: true })).text()).map((p) => ({ ...p, x: Number(p.x), y: Number(p.y) }));
  const svg = $("map-svg"), W = Number(svg.getAttribute("width")), H = Number(svg.getAttribute("height")), pad = 16;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (W - 2 * pad) * (x - x0) / (x1 - x0 || 1), sy = (y) => H - pad - (H - 2 * pad) * (y - y0) / (y1 - y0 || 1);
  const labels = [...new Set(pts.map((p) => p.label))].sort();
  const colour = (l) => PALETTE[labels.indexOf(l) % PALETTE.length];
  const NS = "http://www.w3.org/2000/svg";
  const tip = $("map-tip");
  // the thumbnails of a map of another index than a served collection's are not served
  const collection = job.params.collection || (job.params.index_root ? "" : state.defaultCollection);
  svg.replaceChildren(...pts.map((p) => {
    const c = document.createElementNS(NS, "circle");
    c.setAttribute("cx", sx(p.x).toFixed(1)); c.setAttribute("cy", sy(p.y).toFixed(1)); c.setAttribute("r", "4.5");
    c.setAttribute("fill", colour(p.label)); c.setAttribute("class", "point"); c.dataset.key = p.key;
    c.addEventListener("mouseenter", () => {
      $("map-tip-label").textContent = `${p.label} · ${p.key}`;
      $("map-tip-img").removeAttribute("src");
      if (p.key && collection) blobUrl(thumbPath(collection, p.key, 96)).then((u) => { $("map-tip-img").src = u; }, () => {});
      tip.style.left = `${sx(p.x) + 12}px`; tip.style.top = `${sy(p.y) + 12}px`; tip.hidden = false;
    });
    c.addEventListener("mouseleave", () => { tip.hidden = true; });
    c.addEventListener("click", () => { if (p.key && collection) searchFromKey(p.key, collection); });
    return c;
  }));
  $("map-legend").replaceChildren(...labels.map((l) => {
    const sw = el("span", { class: "sw" }); sw.style.background = colour(l);
    return el("div", {}, sw, l || "(no label)");
  }));
  status.textContent = `job ${jobId}: ${pts.length} points, ${labels.length} labels · hover a point for its image, click to search from it`;
}

start();
