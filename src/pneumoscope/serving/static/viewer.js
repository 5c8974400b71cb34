// pneumoscope viewer: uploads to /api/explain, shows the image with the Grad-CAM colour layer
// blended at an adjustable opacity. No framework, no build step.
"use strict";

const KEY_STORAGE = "pneumoscope-api-key";
const CONCURRENCY = 2;
const state = { model: null, items: [], current: -1, showOverlay: true };
const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) {
    $("keybox").hidden = false;
    throw new Error("this server needs an API key (enter it above)");
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `request failed (HTTP ${response.status})`);
  }
  return body;
}

function setMessage(text, isError = false) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("error", isError);
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => {
    const o = document.createElement("option");
    o.value = v; o.textContent = v; o.selected = v === chosen;
    return o;
  }));
}

async function loadModel() {
  try {
    const m = await api("/api/model");
    state.model = m;
    $("keybox").hidden = true;
    fillSelect($("method"), m.methods, m.methods[0]);
    fillSelect($("style"), m.styles, "hotspot");
    setOpacity(m.default_opacity.hotspot);
    $("model").textContent = `Model ${m.id} (${m.architecture}, Grad-CAM layer ${m.layer}) · ` +
      `operating point P(${m.positive_class}) ≥ ${m.threshold.toFixed(3)} · pneumoscope ${m.version}`;
  } catch (e) {
    $("model").textContent = `Model information unavailable: ${e.message}`;
  }
}

function setOpacity(value) {
  $("opacity").value = String(value);
  $("opacity-value").textContent = Number(value).toFixed(2);
  $("heat").style.opacity = String(value);
}

function row(item) {
  if (!item.row) {
    item.row = document.createElement("tr");
    item.row.addEventListener("click", () => show(state.items.indexOf(item)));
    $("results").querySelector("tbody").appendChild(item.row);
  }
  const r = item.result;
  const cells = [item.file.name, r ? r.label : "", r ? r.prob_pneumonia.toFixed(3) : "",
    item.error ? item.error : (r ? "done" : item.status)];
  item.row.replaceChildren(...cells.map((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 3 && item.error) td.className = "error";
    return td;
  }));
  item.row.classList.toggle("current", state.items.indexOf(item) === state.current);
}

async function explainItem(item) {
  item.status = "working…"; item.error = ""; row(item);
  const form = new FormData();
  form.append("file", item.file, item.file.name);
  const q = new URLSearchParams({ layers: "true", method: $("method").value, style: $("style").value });
  try {
    item.result = await api(`/api/explain?${q}`, { method: "POST", body: form });
  } catch (e) {
    item.result = null;
    item.error = e.message;
  }
  row(item);
  if (state.current === -1 || state.current === state.items.indexOf(item)) show(state.items.indexOf(item));
}

async function handleFiles(files) {
  if (!files.length) return;
  if (!state.model) await loadModel();
  const fresh = Array.from(files).map((file) => ({ file, status: "queued", result: null, error: "" }));
  state.items.push(...fresh);
  state.current = -1;
  $("results").hidden = state.items.length < 2;
  fresh.forEach(row);
  setMessage(`Analysing ${fresh.length} file${fresh.length > 1 ? "s" : ""}…`);
  const queue = fresh.slice();
  const worker = async () => { while (queue.length) await explainItem(queue.shift()); };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, queue.length) }, worker));
  const failed = fresh.filter((i) => i.error).length;
  setMessage(failed ? `${failed} of ${fresh.length} file(s) could not be analysed.` : "", failed > 0);
}

function show(index) {
  const item = state.items[index];
  if (!item) return;
  state.current = index;
  state.items.forEach(row);
  if (!item.result) {
    $("summary").hidden = true; $("stage").hidden = true;
    setMessage(item.error ? `${item.file.name}: ${item.error}` : "Working…", Boolean(item.error));
    $("toggle").disabled = $("download").disabled = true;
    return;
  }
  const r = item.result;
  $("filename").textContent = r.filename;
  $("label").textContent = r.label;
  $("label").className = `label ${r.label}`;
  $("prob").textContent = r.prob_pneumonia.toFixed(3);
  $("threshold").textContent = r.threshold.toFixed(3);
  $("explained").textContent = `${r.explanation.method} on layer ${r.explanation.layer}, ` +
    `explaining ${r.explanation.target} · model ${r.model}`;
  $("base").src = `data:image/png;base64,${r.image_png}`;
  $("heat").src = `data:image/png;base64,${r.heatmap_png}`;
  $("heat").hidden = !state.showOverlay;
  $("summary").hidden = false; $("stage").hidden = false;
  $("toggle").disabled = $("download").disabled = false;
  setMessage("");
}

function downloadOverlay() {
  const item = state.items[state.current];
  if (!item || !item.result) return;
  const base = $("base"), heat = $("heat");
  const canvas = document.createElement("canvas");
  canvas.width = base.naturalWidth; canvas.height = base.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base, 0, 0);
  if (state.showOverlay) {
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
  }
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = item.file.name.replace(/\.[^.]*$/, "") + (state.showOverlay ? ".overlay.png" : ".png");
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
}

function rerunCurrent() {
  const item = state.items[state.current];
  if (item) explainItem(item);
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); handleFiles(e.dataTransfer.files); });
  $("opacity").addEventListener("input", (e) => setOpacity(e.target.value));
  $("toggle").addEventListener("click", () => {
    state.showOverlay = !state.showOverlay;
    $("heat").hidden = !state.showOverlay;
    $("toggle").textContent = state.showOverlay ? "Show original" : "Show overlay";
  });
  $("download").addEventListener("click", downloadOverlay);
  $("method").addEventListener("change", rerunCurrent);
  $("style").addEventListener("change", () => {
    if (state.model) setOpacity(state.model.default_opacity[$("style").value]);
    rerunCurrent();
  });
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("apikey").value);
    loadModel();
  });
  loadModel();
});
