// medfake viewer: slices from the server, windowing and overlays here. Tests watch body[data-renders].
"use strict";

const AXIS = { axial: 0, coronal: 1, sagittal: 2 };
const DIFF_WINDOW = [400, 0];
const TITLES = { before: "before", after: "after", diff: "difference (after − before)" };
const S = { plane: "axial", cursor: [0, 0, 0], width: 1500, level: -600, mode: "navigate", hover: null,
            cache: new Map(), panes: {}, drawId: 0, busy: false };

const $ = (id) => document.getElementById(id);

// --- geometry ---------------------------------------------------------------------------------------
// Rows/columns of a plane: which voxel axis each runs along, their spacing, and whether rows flip.
function layout(plane) {
  const [nz, ny, nx] = S.info.shape, [sz, sy, sx] = S.info.spacing;
  if (plane === "axial") return { rows: ny, cols: nx, rowMm: sy, colMm: sx, flip: false };
  if (plane === "coronal") return { rows: nz, cols: nx, rowMm: sz, colMm: sx, flip: S.info.z_up };
  return { rows: nz, cols: ny, rowMm: sz, colMm: sy, flip: S.info.z_up };
}

function voxelAt(plane, row, col) {  // display row/col (after flip) → z, y, x
  const L = layout(plane), idx = S.cursor[AXIS[plane]];
  const r = L.flip ? L.rows - 1 - row : row;
  if (plane === "axial") return [idx, row, col];
  if (plane === "coronal") return [r, idx, col];
  return [r, col, idx];
}

function displayOf(plane, zyx) {  // z, y, x → display row/col
  const L = layout(plane);
  const flipRow = (z) => (L.flip ? L.rows - 1 - z : z);
  if (plane === "axial") return [zyx[1], zyx[2]];
  if (plane === "coronal") return [flipRow(zyx[0]), zyx[2]];
  return [flipRow(zyx[0]), zyx[1]];
}

function world(zyx) {
  const A = S.info.affine, i = [zyx[2], zyx[1], zyx[0]];
  return [0, 1, 2].map((k) => A[k][0] * i[0] + A[k][1] * i[1] + A[k][2] * i[2] + A[k][3]);
}

// --- data --------------------------------------------------------------------------------------------
async function getSlice(volume, plane, index) {
  const key = `${volume}/${plane}/${index}`;
  if (!S.cache.has(key)) {
    S.cache.set(key, MF.slice(`api/slice/${key}`, volume === "heat"));
    if (S.cache.size > 96) S.cache.delete(S.cache.keys().next().value);
  }
  return S.cache.get(key);
}

function forget(volumes) {
  for (const key of [...S.cache.keys()]) if (volumes.some((v) => key.startsWith(v + "/"))) S.cache.delete(key);
}

// --- drawing -----------------------------------------------------------------------------------------
function makePanes() {
  const main = $("panes");
  main.innerHTML = "";
  for (const name of S.info.volumes) {
    const pane = document.createElement("div");
    pane.className = "pane";
    pane.innerHTML = `<h3>${TITLES[name]}</h3>`;
    const canvas = document.createElement("canvas");
    canvas.id = "canvas-" + name;
    canvas.dataset.volume = name;
    pane.appendChild(canvas);
    main.appendChild(pane);
    S.panes[name] = { canvas, image: null, slice: null };
    canvas.addEventListener("wheel", onWheel, { passive: false });
    canvas.addEventListener("mousemove", onMove);
    canvas.addEventListener("mouseleave", () => { S.hover = null; redrawOverlays(); });
    canvas.addEventListener("click", onClick);
  }
}

async function draw() {
  const id = ++S.drawId, plane = S.plane, index = S.cursor[AXIS[plane]], L = layout(plane);
  const names = S.info.volumes;
  const wanted = names.map((n) => getSlice(n, plane, index));
  const heat = S.info.heat && $("show-heat").checked ? getSlice("heat", plane, index) : null;
  let slices, heatSlice;
  try {
    slices = await Promise.all(wanted);
    heatSlice = heat ? await heat : null;
  } catch (err) { message(String(err)); return; }
  if (id !== S.drawId) return;  // a newer draw started meanwhile
  const perPane = Math.min(names.length > 1 ? 520 : 760, (window.innerWidth - 40) / names.length - 16);
  const [w, h] = MF.displaySize(L.rows, L.cols, L.rowMm, L.colMm, Math.max(200, perPane));
  names.forEach((name, k) => {
    const pane = S.panes[name], [width, level] = name === "diff" ? DIFF_WINDOW : [S.width, S.level];
    pane.canvas.width = w; pane.canvas.height = h;
    pane.slice = slices[k];
    pane.image = MF.windowed(slices[k], width, level, L.flip);
  });
  S.heatImage = heatSlice ? heatRgba(heatSlice, L.flip) : null;
  redrawOverlays();
  $("slider").max = S.info.shape[AXIS[plane]] - 1;
  $("slider").value = index;
  $("slice-label").textContent = `${plane} ${index + 1} / ${S.info.shape[AXIS[plane]]}`;
  document.body.dataset.plane = plane;
  document.body.dataset.slice = String(index);
  document.body.dataset.renders = String(+document.body.dataset.renders + 1);
}

function heatRgba(sl, flip) {
  const [lo, hi] = S.info.heat, image = new ImageData(sl.cols, sl.rows), px = image.data;
  for (let r = 0; r < sl.rows; r++) {
    const src = (flip ? sl.rows - 1 - r : r) * sl.cols;
    for (let c = 0; c < sl.cols; c++) {
      const t = Math.min(1, Math.max(0, (sl.values[src + c] - lo) / (hi - lo))), d = (r * sl.cols + c) * 4;
      if (t <= 0.05) continue;
      px[d] = 255; px[d + 1] = Math.round(220 * t); px[d + 2] = 0; px[d + 3] = Math.round(170 * t);
    }
  }
  return image;
}

function redrawOverlays() {
  for (const pane of Object.values(S.panes)) {
    if (!pane.image) continue;
    const ctx = MF.blit(pane.canvas, pane.image);
    if (S.heatImage && pane.canvas.dataset.volume !== "diff") {
      const off = document.createElement("canvas");
      off.width = S.heatImage.width; off.height = S.heatImage.height;
      off.getContext("2d").putImageData(S.heatImage, 0, 0);
      ctx.drawImage(off, 0, 0, pane.canvas.width, pane.canvas.height);
    }
    if ($("show-truth").checked) drawMarkers(ctx, pane.canvas);
    if (S.hover) drawCross(ctx, pane.canvas, S.hover);
  }
}

function toCanvas(canvas, row, col) {
  const L = layout(S.plane);
  return [(col + 0.5) * canvas.width / L.cols, (row + 0.5) * canvas.height / L.rows];
}

function drawMarkers(ctx, canvas) {
  const axis = AXIS[S.plane], index = S.cursor[axis], mm = S.info.spacing[axis];
  const L = layout(S.plane), pxPerMm = canvas.width / (L.cols * L.colMm);
  for (const m of [...S.info.markers, ...(S.editMarkers || [])]) {
    const away = Math.abs(m.zyx[axis] - index) * mm;
    if (away > 12) continue;
    const [row, col] = displayOf(S.plane, m.zyx), [x, y] = toCanvas(canvas, row, col);
    ctx.strokeStyle = m.kind === "edit" ? "#3cd0ff" : "#5f5";
    ctx.lineWidth = 2;
    ctx.setLineDash(away > 0.5 * mm ? [4, 3] : []);
    ctx.beginPath(); ctx.arc(x, y, Math.max(6, 12 * pxPerMm), 0, 2 * Math.PI); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = ctx.strokeStyle; ctx.font = "12px sans-serif";
    ctx.fillText(m.label, x + 14 * pxPerMm + 4, y - 4);
  }
}

function drawCross(ctx, canvas, zyx) {
  const [row, col] = displayOf(S.plane, zyx), [x, y] = toCanvas(canvas, row, col);
  ctx.strokeStyle = "rgba(255,200,0,0.8)"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, y - 6); ctx.moveTo(x, y + 6); ctx.lineTo(x, canvas.height);
  ctx.moveTo(0, y); ctx.lineTo(x - 6, y); ctx.moveTo(x + 6, y); ctx.lineTo(canvas.width, y); ctx.stroke();
}

// --- interaction -------------------------------------------------------------------------------------
function eventVoxel(ev) {
  const canvas = ev.currentTarget, L = layout(S.plane), box = canvas.getBoundingClientRect();
  const col = Math.min(L.cols - 1, Math.max(0, Math.floor((ev.clientX - box.left) / box.width * L.cols)));
  const row = Math.min(L.rows - 1, Math.max(0, Math.floor((ev.clientY - box.top) / box.height * L.rows)));
  return { zyx: voxelAt(S.plane, row, col), row, col };
}

function valueAt(name, row, col) {
  const pane = S.panes[name];
  if (!pane || !pane.slice) return null;
  const L = layout(S.plane), r = L.flip ? L.rows - 1 - row : row;
  return pane.slice.values[r * pane.slice.cols + col];
}

function onMove(ev) {
  const { zyx, row, col } = eventVoxel(ev);
  S.hover = zyx;
  const w = world(zyx).map((v) => v.toFixed(1)).join(", ");
  const values = S.info.volumes.map((n) => `${n} ${valueAt(n, row, col)}`).join("  ");
  $("cursor").textContent = `voxel z,y,x ${zyx.join(", ")}   world x,y,z ${w} mm   HU: ${values}`;
  redrawOverlays();
}

function setIndex(index) {
  const axis = AXIS[S.plane], n = S.info.shape[axis];
  const clamped = Math.min(n - 1, Math.max(0, index));
  if (clamped === S.cursor[axis]) return;
  S.cursor[axis] = clamped;
  draw();
}

function onWheel(ev) {
  ev.preventDefault();
  setIndex(S.cursor[AXIS[S.plane]] + (ev.deltaY > 0 ? 1 : -1));
}

async function onClick(ev) {
  const { zyx } = eventVoxel(ev);
  if (S.mode === "navigate") {
    S.cursor = zyx.slice();
    return draw();
  }
  if (S.busy) return;
  S.busy = true;
  try {
    if (S.mode === "score") {
      message("scoring…");
      showScore(await MF.json("api/score", { z: zyx[0], y: zyx[1], x: zyx[2] }));
      message("");
    } else {
      message(`${S.mode} at z,y,x ${zyx.join(", ")}…`);
      const state = await MF.json("api/edit", { action: S.mode, z: zyx[0], y: zyx[1], x: zyx[2] });
      afterEdit(state, `${S.mode} done in ${state.seconds.toFixed(2)} s`);
    }
  } catch (err) { message(String(err.message || err)); }
  S.busy = false;
}

function afterEdit(state, text) {
  S.editMarkers = state.edit_markers;
  document.body.dataset.edits = String(state.edits);
  forget(["after", "diff"]);
  message(text + (state.changed ? "" : " (nothing changed)"));
  return draw();
}

function showScore(result) {
  $("score-box").hidden = false;
  const [rows, cols] = result.size;
  paint($("score-patch"), result.patch, rows, cols, 0, 1, false);
  const top = Math.max(...result.residual) || 1;
  paint($("score-map"), result.residual, rows, cols, 0, top, true);
  $("score-text").textContent = `${result.method} score ${result.score.toFixed(4)} at z,y,x ${result.zyx.join(", ")}`;
  document.body.dataset.scoreAt = result.zyx.join(",");
  document.body.dataset.score = String(result.score);
}

function paint(canvas, values, rows, cols, lo, hi, hot) {
  const image = new ImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const t = Math.min(1, Math.max(0, (values[i] - lo) / (hi - lo)));
    image.data.set(hot ? [255 * Math.min(1, 2 * t), 255 * Math.max(0, 2 * t - 1), 0, 255] : [255 * t, 255 * t, 255 * t, 255], 4 * i);
  }
  MF.blit(canvas, image);
}

function message(text) { $("message").textContent = text; }

function setWindow(width, level) {
  S.width = width; S.level = level;
  $("width").value = width; $("level").value = level;
  for (const b of document.querySelectorAll("[data-preset]")) {
    const [w, l] = MF.PRESETS[b.dataset.preset];
    b.classList.toggle("on", w === width && l === level);
  }
  for (const pane of Object.values(S.panes)) {
    if (pane.slice && pane.canvas.dataset.volume !== "diff") pane.image = MF.windowed(pane.slice, width, level, layout(S.plane).flip);
  }
  redrawOverlays();
  document.body.dataset.renders = String(+document.body.dataset.renders + 1);
  document.body.dataset.window = `${width},${level}`;
}

function setPlane(plane) {
  S.plane = plane;
  for (const b of document.querySelectorAll("[data-plane]")) b.classList.toggle("on", b.dataset.plane === plane);
  draw();
}

function wire() {
  for (const b of document.querySelectorAll("[data-preset]")) b.onclick = () => setWindow(...MF.PRESETS[b.dataset.preset]);
  for (const b of document.querySelectorAll("[data-plane]")) b.onclick = () => setPlane(b.dataset.plane);
  $("width").onchange = () => setWindow(Math.max(1, +$("width").value), S.level);
  $("level").onchange = () => setWindow(S.width, +$("level").value);
  $("slider").oninput = () => setIndex(+$("slider").value);
  $("show-heat").onchange = () => draw();
  $("show-truth").onchange = () => redrawOverlays();
  for (const r of document.querySelectorAll("input[name=mode]")) r.onchange = () => { S.mode = r.value; };
  $("undo").onclick = async () => {
    try { afterEdit(await MF.json("api/undo", {}), "undone"); } catch (err) { message(err.message); }
  };
  $("save").onclick = async () => {
    try {
      const r = await MF.json("api/save", {});
      message(`saved ${r.output} (${r.rows} manifest row${r.rows === 1 ? "" : "s"} in ${r.manifest})`);
      document.body.dataset.saved = r.output;
    } catch (err) { message(err.message); }
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type !== "radio" && ev.target.type !== "range") return;
    const step = { ArrowUp: -1, ArrowDown: 1, PageUp: -10, PageDown: 10 }[ev.key];
    if (step) { ev.preventDefault(); setIndex(S.cursor[AXIS[S.plane]] + step); }
    const plane = { a: "axial", c: "coronal", s: "sagittal" }[ev.key];
    if (plane) setPlane(plane);
  });
}

async function start() {
  S.info = await MF.json("api/info");
  S.cursor = S.info.shape.map((n) => Math.floor(n / 2));
  S.editMarkers = S.info.edit_markers || [];
  const tools = [...S.info.actions, ...(S.info.detector ? ["score"] : []), ...(S.info.actions.length ? ["edit"] : [])];
  $("tools").hidden = tools.length === 0;
  for (const el of document.querySelectorAll("[data-needs]")) el.hidden = !tools.includes(el.dataset.needs);
  if (S.info.notes.length) message(S.info.notes.join("; "));
  makePanes();
  wire();
  const preset = S.info.modality === "CT" ? MF.PRESETS.lung : [800, 400];
  S.width = preset[0]; S.level = preset[1];
  $("width").value = S.width; $("level").value = S.level;
  setPlane("axial");
}

start().catch((err) => message(String(err)));
