// The page of `segformer serve`: upload (picker, drop, camera), then draw the parse over the photo.
// Everything comes from this server: /v1/model once, /v1/parse?output=parts per image.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, result: null, ids: null, width: 0, height: 0, shown: new Set(), name: "image", stream: null };

function setState(s) { document.body.dataset.state = s; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
  if (message) setState("error");
}

function headers() {
  const token = sessionStorage.getItem("segformer-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The server's one-line JSON error, or the status line when the answer is not ours.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error} (HTTP ${response.status})`;
  } catch (_) { /* not JSON */ }
  return `the server answered HTTP ${response.status} ${response.statusText}`;
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/model", { headers: headers() });
  } catch (err) {
    showError(`cannot reach the server: ${err.message}`);
    return;
  }
  if (response.status === 401) {
    $("token-box").hidden = false;
    showError("this server needs a token: enter it above");
    return;
  }
  if (!response.ok) { showError(await errorOf(response)); return; }
  state.model = await response.json();
  $("token-box").hidden = true;
  $("model-name").textContent = state.model.name;
  $("whole-label").hidden = !state.model.faces;
  showError("");
  setState("ready");
}

function b64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot decode image"));
    img.src = url;
  });
}

// (H, W) class ids rebuilt from the per-class masks (exact, whatever the palette).
async function classIds(result) {
  const { width, height } = result;
  const ids = new Uint8Array(width * height);
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  for (const [id, b64] of Object.entries(result.masks)) {
    const url = URL.createObjectURL(b64Blob(b64, "image/png"));
    try {
      ctx.clearRect(0, 0, width, height);
      ctx.drawImage(await loadImage(url), 0, 0);
    } finally { URL.revokeObjectURL(url); }
    const px = ctx.getImageData(0, 0, width, height).data;
    for (let i = 0; i < ids.length; i++) if (px[4 * i] > 127) ids[i] = Number(id);
  }
  return ids;
}

function drawOverlay() {
  const canvas = $("overlay");
  const { width, height, ids } = state;
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  const classes = state.model.label_set.classes;
  const rgba = new Uint8Array(256 * 4);  // id -> colour, transparent when hidden or background
  for (const c of classes) {
    if (!state.shown.has(c.id) || (c.id === 0 && c.name === "background")) continue;
    rgba.set([...c.color, 255], 4 * c.id);
  }
  const data = out.data;
  for (let i = 0; i < ids.length; i++) {
    const k = 4 * ids[i];
    data[4 * i] = rgba[k]; data[4 * i + 1] = rgba[k + 1]; data[4 * i + 2] = rgba[k + 2]; data[4 * i + 3] = rgba[k + 3];
  }
  ctx.putImageData(out, 0, 0);
}

function drawLegend() {
  const legend = $("legend");
  const part = $("part");
  legend.replaceChildren();
  part.replaceChildren();
  const names = state.model.label_set.classes;
  for (const c of state.result.classes) {
    const li = document.createElement("li");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.shown.has(c.id);
    box.dataset.id = c.id;
    box.id = `class-${c.id}`;
    box.addEventListener("change", () => {
      if (box.checked) state.shown.add(c.id); else state.shown.delete(c.id);
      drawOverlay();
    });
    const label = document.createElement("label");
    label.htmlFor = box.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${(c.color || [128, 128, 128]).join(",")})`;
    label.append(swatch, ` ${c.name}`);
    const area = document.createElement("span");
    area.className = "area";
    area.textContent = c.fraction < 0.001 ? "<0.1%" : `${(100 * c.fraction).toFixed(1)}%`;
    li.append(box, label, area);
    legend.append(li);
    const option = document.createElement("option");
    option.value = c.id;
    option.textContent = (names[c.id] || c).name;
    part.append(option);
  }
}

async function parse(file) {
  if (!file) return;
  if (!state.model) { await loadModel(); if (!state.model) return; }
  showError("");
  setState("parsing");
  $("status").textContent = `parsing ${file.name || "image"}…`;
  const form = new FormData();
  form.append("image", file, file.name || "image.png");
  const query = $("whole").checked ? "?output=parts&faces=0" : "?output=parts";
  const start = performance.now();
  let response;
  try {
    response = await fetch(`/v1/parse${query}`, { method: "POST", body: form, headers: headers() });
  } catch (err) {
    $("status").textContent = "";
    showError(`cannot reach the server: ${err.message}`);
    return;
  }
  if (!response.ok) {
    $("status").textContent = "";
    if (response.status === 401) $("token-box").hidden = false;
    showError(await errorOf(response));
    return;
  }
  const result = await response.json();
  state.result = result;
  state.width = result.width; state.height = result.height;
  state.name = (file.name || "image").replace(/\.[^.]*$/, "") || "image";
  state.ids = await classIds(result);
  state.shown = new Set(state.model.label_set.classes.map((c) => c.id));
  const photo = $("photo");
  const url = URL.createObjectURL(file);
  try {
    await loadImage(url);
    photo.src = url;
  } catch (_) {  // a format this browser cannot show (TIFF): show the server's overlay instead
    photo.src = URL.createObjectURL(b64Blob(result.overlay, "image/png"));
  }
  drawOverlay();
  drawLegend();
  $("hint").hidden = true;
  $("stage").hidden = false;
  $("downloads").hidden = false;
  const seconds = ((performance.now() - start) / 1000).toFixed(2);
  const faces = result.whole_image ? "parsed as one face crop" : `${result.faces.length} face(s) found`;
  $("status").textContent = `${result.width}×${result.height}: ${faces} in ${seconds} s`;
  $("faces").textContent = result.warning || "";
  setState("done");
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function pointer(event) {
  if (!state.ids) return;
  const rect = $("overlay").getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * state.width);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * state.height);
  if (x < 0 || y < 0 || x >= state.width || y >= state.height) { $("pointer").textContent = "\u00a0"; return; }
  const c = state.model.label_set.classes[state.ids[y * state.width + x]];
  $("pointer").textContent = `${c ? c.name : state.ids[y * state.width + x]} (${x}, ${y})`;
}

async function openCamera() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (err) {
    showError(`the camera is not available: ${err.message || err.name}`);
    return;
  }
  $("video").srcObject = state.stream;
  $("camera-box").hidden = false;
}

function closeCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("camera-box").hidden = true;
}

function snapshot() {
  const video = $("video");
  if (!video.videoWidth) { showError("the camera has no picture yet: try again"); return; }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    closeCamera();
    parse(new File([blob], "camera.png", { type: "image/png" }));
  }, "image/png");
}

window.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => parse(e.target.files[0]));
  $("whole").addEventListener("change", () => { if ($("file").files[0]) parse($("file").files[0]); });
  $("opacity").addEventListener("input", (e) => { $("overlay").style.opacity = e.target.value / 100; });
  $("overlay").style.opacity = $("opacity").value / 100;
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) parse(file); else showError("drop an image file");
  });
  $("stage").addEventListener("mousemove", pointer);
  $("stage").addEventListener("mouseleave", () => { $("pointer").textContent = "\u00a0"; });
  $("dl-label").addEventListener("click", () => download(b64Blob(state.result.label_map, "image/png"), `${state.name}.png`));
  $("dl-overlay").addEventListener("click", () => download(b64Blob(state.result.overlay, "image/png"), `${state.name}-overlay.png`));
  $("dl-part").addEventListener("click", () => {
    const id = $("part").value;
    const name = state.model.label_set.classes[id].name;
    download(b64Blob(state.result.masks[id], "image/png"), `${state.name}-${name}.png`);
  });
  $("token-box").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("segformer-token", $("token").value);
    loadModel();
  });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("camera").hidden = false;
    $("camera").addEventListener("click", openCamera);
    $("snap").addEventListener("click", snapshot);
    $("camera-close").addEventListener("click", closeCamera);
  }
  loadModel();
});
