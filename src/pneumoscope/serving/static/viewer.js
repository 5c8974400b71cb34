// pneumoscope viewer: uploads to /api/explain and shows the image with the Grad-CAM colour
// layer blended at an adjustable opacity; zoom, pan, window/level, side by side, keyboard
// navigation and a CSV of every result. No framework, no build step.
"use strict";

const KEY_STORAGE = "pneumoscope-api-key";
const CONCURRENCY = 2;
// Window/level act on the display image's 8-bit grey levels; this pair leaves them unchanged.
const WL_DEFAULT = { width: 256, level: 128 };
const ZOOM_MIN = 0.5, ZOOM_MAX = 32;

const state = {
  model: null, items: [], current: -1, showOverlay: true, sideBySide: false,
  view: { zoom: 1, panX: 0, panY: 0 }, wl: { ...WL_DEFAULT },
  source: null,  // the current image's grey pixels (ImageData), the input of window/level
  shown: null,   // the item whose image is on screen
};
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

// ------------------------------------------------------------------ results list

function row(item) {
  if (!item.row) {
    item.row = document.createElement("tr");
    item.row.addEventListener("click", () => show(state.items.indexOf(item)));
    $("results").querySelector("tbody").appendChild(item.row);
  }
  const r = item.result;
  const cell = (text, className = "", span = 1) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    if (span > 1) td.colSpan = span;
    return td;
  };
  // A failed file has no prediction: its error takes both result columns and wraps there.
  item.row.replaceChildren(...(item.error
    ? [cell(item.file.name, "file"), cell(item.error, "error", 2)]
    : r ? [cell(item.file.name, "file"), cell(r.label, `label ${r.label}`), cell(r.prob_pneumonia.toFixed(3), "prob")]
      : [cell(item.file.name, "file"), cell(item.status, "status", 2)]));
  const selected = state.items.indexOf(item) === state.current;
  item.row.classList.toggle("current", selected);
  item.row.setAttribute("aria-selected", String(selected));
}

function updateCount() {
  const done = state.items.filter((i) => i.result).length;
  const failed = state.items.filter((i) => i.error).length;
  $("count").textContent = `${state.items.length} file${state.items.length === 1 ? "" : "s"}: ` +
    `${done} done${failed ? `, ${failed} failed` : ""}`;
  $("download-all").disabled = done + failed === 0;
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
  updateCount();
  if (state.current === -1 || state.current === state.items.indexOf(item)) show(state.items.indexOf(item));
}

async function handleFiles(files) {
  if (!files.length) return;
  if (!state.model) await loadModel();
  const fresh = Array.from(files).map((file) => ({ file, status: "queued", result: null, error: "" }));
  state.items.push(...fresh);
  state.current = -1;
  $("results-box").hidden = false;
  fresh.forEach(row);
  updateCount();
  setMessage(`Analysing ${fresh.length} file${fresh.length > 1 ? "s" : ""}…`);
  const queue = fresh.slice();
  const worker = async () => { while (queue.length) await explainItem(queue.shift()); };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, queue.length) }, worker));
  const failed = fresh.filter((i) => i.error).length;
  if (failed) setMessage(`${failed} of ${fresh.length} file(s) could not be analysed.`, true);
  else if (state.items[state.current] && state.items[state.current].result) setMessage("");
}

function show(index) {
  const item = state.items[index];
  if (!item) return;
  state.current = index;
  state.items.forEach(row);
  item.row.scrollIntoView({ block: "nearest" });
  if (!item.result) {
    $("summary").hidden = true; $("dicom").hidden = true; $("viewer").hidden = true;
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
  showDicom(r.dicom);
  $("summary").hidden = false; $("viewer").hidden = false;
  fitStage();
  $("toggle").disabled = $("download").disabled = false;
  setMessage("");
  if (state.shown !== item) state.view = { zoom: 1, panX: 0, panY: 0 };  // a new image starts fitted
  state.shown = item;
  const base = $("base");
  base.onload = () => { if (state.items[state.current] === item) loadSource(); };
  base.src = `data:image/png;base64,${r.image_png}`;
  $("heat").src = `data:image/png;base64,${r.heatmap_png}`;
  applyOverlay();
}

function showDicom(d) {
  $("dicom").hidden = !d;
  if (!d) return;
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));
  $("d-modality").textContent = dash(d.modality);
  $("d-view").textContent = dash(d.view_position);
  $("d-size").textContent = d.columns && d.rows ? `${d.columns} × ${d.rows} px` : "—";
  $("d-spacing").textContent = d.pixel_spacing_mm
    ? `${d.pixel_spacing_mm[0]} × ${d.pixel_spacing_mm[1]} mm` +
      (d.pixel_spacing_source === "ImagerPixelSpacing" ? " (at the detector)" : "")
    : "—";
  const hasPatient = "patient_name" in d;
  $("d-patient-k").hidden = $("d-patient").hidden = !hasPatient;
  $("d-patient").textContent = hasPatient ? `${dash(d.patient_name)} (ID ${dash(d.patient_id)})` : "";
  $("d-patient-note").hidden = hasPatient;
}

function move(step) {
  if (!state.items.length) return;
  const start = state.current === -1 ? (step > 0 ? -1 : state.items.length) : state.current;
  show(Math.max(0, Math.min(state.items.length - 1, start + step)));
}

// ------------------------------------------------------------------ image: window/level

function loadSource() {
  const base = $("base");
  const w = base.naturalWidth, h = base.naturalHeight;
  const scratch = document.createElement("canvas");
  scratch.width = w; scratch.height = h;
  const ctx = scratch.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(base, 0, 0);
  state.source = ctx.getImageData(0, 0, w, h);
  for (const c of [$("canvas"), $("canvas-original")]) { c.width = w; c.height = h; }
  render();
  applyView();
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderNow(); });
}

// The DICOM linear VOI function on 8-bit values: width 256 at level 128 is the identity.
function renderNow() {
  const src = state.source;
  if (!src) return;
  const { width, level } = state.wl;
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) lut[v] = Math.round(((v - (level - 0.5)) / (width - 1) + 0.5) * 255);
  const out = new ImageData(src.width, src.height);
  const s = src.data, o = out.data;
  for (let i = 0; i < s.length; i += 4) {
    o[i] = lut[s[i]]; o[i + 1] = lut[s[i + 1]]; o[i + 2] = lut[s[i + 2]]; o[i + 3] = 255;
  }
  $("canvas").getContext("2d").putImageData(out, 0, 0);
  $("canvas-original").getContext("2d").putImageData(out, 0, 0);
  updateViewInfo();
}

function setWindowLevel(width, level) {
  state.wl.width = Math.round(Math.max(1, Math.min(512, width)));
  state.wl.level = Math.round(Math.max(0, Math.min(255, level)));
  $("window").value = String(state.wl.width); $("window-value").textContent = String(state.wl.width);
  $("level").value = String(state.wl.level); $("level-value").textContent = String(state.wl.level);
  render();
}

// ------------------------------------------------------------------ image: zoom and pan

// The layer's transform maps image pixels to pane pixels: fit the image, then zoom about the
// pane's centre, then pan. Both panes have the same size and share it.
function geometry() {
  const pane = $("pane-main"), c = $("canvas");
  const pw = pane.clientWidth, ph = pane.clientHeight, iw = c.width || 1, ih = c.height || 1;
  const fit = Math.min(pw / iw, ph / ih) || 1;
  return { pw, ph, iw, ih, scale: fit * state.view.zoom };
}

// On a two-column screen the image fills the first screen down to its bottom edge, whatever
// the panels above it take; on a phone the CSS keeps it square.
function fitStage() {
  const stage = $("stage");
  if ($("viewer").hidden || window.matchMedia("(max-width: 860px)").matches) { stage.style.height = ""; return; }
  const top = stage.getBoundingClientRect().top + window.scrollY;
  const below = $("view-info").offsetHeight + 16;
  stage.style.height = `${Math.max(320, Math.floor(window.innerHeight - top - below))}px`;
}

function applyView() {
  const { pw, ph, iw, ih, scale } = geometry();
  const tx = pw / 2 + state.view.panX - (iw / 2) * scale;
  const ty = ph / 2 + state.view.panY - (ih / 2) * scale;
  const t = `translate(${tx}px, ${ty}px) scale(${scale})`;
  for (const layer of document.querySelectorAll("#stage .layer")) layer.style.transform = t;
  // Past 3x the reader wants to see the pixels, not a blur.
  for (const c of [$("canvas"), $("canvas-original")]) c.style.imageRendering = scale > 3 ? "pixelated" : "auto";
  updateViewInfo();
}

function zoomAt(factor, px, py) {
  const { pw, ph } = geometry();
  const zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, state.view.zoom * factor));
  const ratio = zoom / state.view.zoom;
  // Keep the image point under (px, py) where it is.
  state.view.panX = px - pw / 2 - (px - pw / 2 - state.view.panX) * ratio;
  state.view.panY = py - ph / 2 - (py - ph / 2 - state.view.panY) * ratio;
  state.view.zoom = zoom;
  applyView();
}

function resetView() {
  state.view = { zoom: 1, panX: 0, panY: 0 };
  applyView();
  setWindowLevel(WL_DEFAULT.width, WL_DEFAULT.level);
}

function updateViewInfo() {
  $("view-info").textContent = `Zoom ${Math.round(state.view.zoom * 100)} % · ` +
    `window ${state.wl.width} / level ${state.wl.level} (of the 8-bit display image)`;
}

function applyOverlay() {
  $("heat").hidden = !state.showOverlay;
  $("toggle").textContent = state.showOverlay ? "Show original" : "Show overlay";
  $("main-tag").textContent = state.showOverlay ? "Overlay" : "Original";
}

function toggleOverlay() {
  state.showOverlay = !state.showOverlay;
  applyOverlay();
}

function toggleSideBySide() {
  state.sideBySide = !state.sideBySide;
  $("pane-original").hidden = !state.sideBySide;
  $("side").setAttribute("aria-pressed", String(state.sideBySide));
  $("side").textContent = state.sideBySide ? "Single view" : "Side by side";
  applyView();
}

function attachPane(pane) {
  let drag = null;
  const touches = new Map();  // touch points now down on the pane: two of them pinch-zoom
  let pinch = null;
  const pinchState = () => {
    const [a, b] = Array.from(touches.values());
    return { dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, mx: (a.x + b.x) / 2, my: (a.y + b.y) / 2 };
  };
  pane.addEventListener("wheel", (e) => {
    if (!state.source) return;
    e.preventDefault();
    const rect = pane.getBoundingClientRect();
    // deltaY is in pixels or lines depending on the device; either way a notch is ~10-20 %.
    const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    zoomAt(Math.exp(-dy * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  pane.addEventListener("contextmenu", (e) => e.preventDefault());  // right-drag is window/level
  pane.addEventListener("pointerdown", (e) => {
    if (!state.source) return;
    if (e.pointerType === "touch") {
      touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
      if (touches.size === 2) { drag = null; pinch = pinchState(); return; }
    }
    const wl = e.button === 2 || (e.button === 0 && e.shiftKey);
    if (e.button !== 0 && !wl) return;
    e.preventDefault();
    try { pane.setPointerCapture(e.pointerId); } catch (err) { /* a pointer already gone */ }
    pane.classList.add("dragging");
    drag = { id: e.pointerId, wl, x: e.clientX, y: e.clientY, view: { ...state.view }, win: { ...state.wl } };
  });
  pane.addEventListener("pointermove", (e) => {
    if (touches.has(e.pointerId)) touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (pinch && touches.size === 2) {
      // Two fingers: zoom by the change of their distance about their midpoint, pan with it.
      const now = pinchState(), rect = pane.getBoundingClientRect();
      state.view.panX += now.mx - pinch.mx;
      state.view.panY += now.my - pinch.my;
      zoomAt(now.dist / pinch.dist, now.mx - rect.left, now.my - rect.top);
      pinch = now;
      return;
    }
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (drag.wl) {
      // Right/left: wider/narrower window (less/more contrast); down/up: higher/lower level (darker/brighter).
      setWindowLevel(drag.win.width + dx, drag.win.level + dy);
    } else {
      state.view.panX = drag.view.panX + dx;
      state.view.panY = drag.view.panY + dy;
      applyView();
    }
  });
  const end = (e) => {
    touches.delete(e.pointerId);
    if (touches.size < 2) pinch = null;
    if (!drag || e.pointerId !== drag.id) return;
    drag = null;
    pane.classList.remove("dragging");
  };
  pane.addEventListener("pointerup", end);
  pane.addEventListener("pointercancel", end);
}

// ------------------------------------------------------------------ downloads

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// What you see is what you get: the windowed image, with the colour layer when it is shown.
function downloadOverlay() {
  const item = state.items[state.current];
  if (!item || !item.result || !state.source) return;
  const src = $("canvas");
  const canvas = document.createElement("canvas");
  canvas.width = src.width; canvas.height = src.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(src, 0, 0);
  if (state.showOverlay) {
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage($("heat"), 0, 0, canvas.width, canvas.height);
  }
  const stem = item.file.name.replace(/\.[^.]*$/, "");
  canvas.toBlob((blob) => saveBlob(blob, stem + (state.showOverlay ? ".overlay.png" : ".png")), "image/png");
}

// A cell that a spreadsheet would run as a formula starts with one of these; a leading quote
// makes it text (file names and error messages come from outside).
const FORMULA_START = /^[=+\-@\t\r]/;

function csvCell(value, text = false) {
  let s = value === null || value === undefined ? "" : String(value);
  if (text && FORMULA_START.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function resultsCsv() {
  const withPatient = state.items.some((i) => i.result && i.result.dicom && "patient_name" in i.result.dicom);
  const header = ["file", "status", "label", "prob_pneumonia", "threshold", "model", "method", "layer",
    "modality", "view_position", "columns", "rows", "pixel_spacing_mm", "pixel_spacing_source",
    ...(withPatient ? ["patient_name", "patient_id"] : []), "error"];
  const lines = [header.join(",")];
  for (const item of state.items) {
    const r = item.result || {}, d = r.dicom || {}, x = r.explanation || {};
    const status = item.result ? "done" : item.error ? "error" : item.status;
    const cells = [
      csvCell(item.file.name, true), csvCell(status), csvCell(r.label), csvCell(r.prob_pneumonia),
      csvCell(r.threshold), csvCell(r.model), csvCell(x.method), csvCell(x.layer),
      csvCell(d.modality, true), csvCell(d.view_position, true), csvCell(d.columns), csvCell(d.rows),
      csvCell(d.pixel_spacing_mm ? d.pixel_spacing_mm.join(" x ") : ""), csvCell(d.pixel_spacing_source),
      ...(withPatient ? [csvCell(d.patient_name, true), csvCell(d.patient_id, true)] : []),
      csvCell(item.error, true),
    ];
    lines.push(cells.join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

function downloadAll() {
  if (!state.items.length) return;
  saveBlob(new Blob([resultsCsv()], { type: "text/csv;charset=utf-8" }), "pneumoscope-results.csv");
}

// ------------------------------------------------------------------ keys and wiring

function rerunCurrent() {
  const item = state.items[state.current];
  if (item) explainItem(item);
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  // Leave keys to whatever takes typing or arrows (text, selects, sliders); buttons and the
  // file chooser keep the focus after a click, and must not swallow the viewer's keys.
  const typing = t && (t.isContentEditable || t.tagName === "SELECT" || t.tagName === "TEXTAREA" ||
    (t.tagName === "INPUT" && !["file", "button", "submit", "checkbox"].includes(t.type)));
  if (typing) return;
  const viewing = !$("viewer").hidden && state.source;
  switch (e.key) {
    case "ArrowDown": case "j": move(1); break;
    case "ArrowUp": case "k": move(-1); break;
    case "o": case "O": if (viewing) toggleOverlay(); break;
    case "s": case "S": if (viewing) toggleSideBySide(); break;
    case "r": case "R": if (viewing) resetView(); break;
    case "+": case "=": if (viewing) { const g = geometry(); zoomAt(1.25, g.pw / 2, g.ph / 2); } break;
    case "-": case "_": if (viewing) { const g = geometry(); zoomAt(0.8, g.pw / 2, g.ph / 2); } break;
    default: return;
  }
  e.preventDefault();
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
  $("toggle").addEventListener("click", toggleOverlay);
  $("side").addEventListener("click", toggleSideBySide);
  $("window").addEventListener("input", (e) => setWindowLevel(Number(e.target.value), state.wl.level));
  $("level").addEventListener("input", (e) => setWindowLevel(state.wl.width, Number(e.target.value)));
  $("reset").addEventListener("click", resetView);
  $("download").addEventListener("click", downloadOverlay);
  $("download-all").addEventListener("click", downloadAll);
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
  attachPane($("pane-main"));
  attachPane($("pane-original"));
  new ResizeObserver(applyView).observe($("stage"));
  window.addEventListener("resize", fitStage);
  document.addEventListener("keydown", onKey);
  loadModel();
});
