// The reader page: log in by name, rate each case (malignancy and manipulation 1-5, optional click), resume.
"use strict";

const R = { reader: null, caseData: null, blocks: [], width: 1500, level: -600, active: 0 };
const $ = (id) => document.getElementById(id);
const QUESTIONS = [["malignancy", "Likelihood of malignancy"], ["manipulation", "Likelihood of manipulation"]];

function message(text) { $("message").textContent = text; }

async function next() {
  const progress = await MF.json(`api/progress/${encodeURIComponent(R.reader)}`);
  $("progress").textContent = `${R.reader}: ${progress.done} of ${progress.total} cases done`;
  if (!progress.next) {
    $("case").hidden = true; $("login").hidden = true; $("finished").hidden = false;
    document.body.dataset.position = "done";
    return;
  }
  const data = await MF.json(`api/case/${encodeURIComponent(R.reader)}/${progress.next}`);
  R.caseData = data;
  $("progress").textContent = `${R.reader}: case ${data.position} of ${data.total}`;
  buildCase(data);
  document.body.dataset.position = String(data.position);
}

function buildCase(data) {
  const box = $("images");
  box.innerHTML = "";
  R.blocks = data.images.map((image, k) => {
    const label = data.images.length > 1 ? `Image ${"AB"[k]}` : "Image";
    const block = document.createElement("div");
    block.className = "image-block";
    block.innerHTML = `<strong>${label}</strong><canvas data-k="${k}"></canvas>
      <div><input type="range" min="0" max="${image.shape[0] - 1}" value="${Math.floor(image.shape[0] / 2)}">
      <span class="slice"></span></div>` +
      QUESTIONS.map(([key, text]) => `<div class="rating"><span class="q">${text}</span>` +
        [1, 2, 3, 4, 5].map((v) => `<label><input type="radio" name="${key}-${k}" value="${v}">${v}</label>`).join("") +
        "</div>").join("") +
      `<div class="click">suspected place: <span class="where">none</span> <button class="clear">clear</button></div>`;
    box.appendChild(block);
    const state = { image, block, canvas: block.querySelector("canvas"), index: Math.floor(image.shape[0] / 2),
                    click: null, slice: null, drawId: 0 };
    const slider = block.querySelector("input[type=range]");
    slider.oninput = () => { state.index = +slider.value; draw(state); };
    state.canvas.addEventListener("wheel", (ev) => { ev.preventDefault(); R.active = k; scroll(state, ev.deltaY > 0 ? 1 : -1); }, { passive: false });
    state.canvas.addEventListener("mouseenter", () => { R.active = k; });
    state.canvas.addEventListener("click", (ev) => mark(state, ev));
    block.querySelector(".clear").onclick = () => { state.click = null; block.querySelector(".where").textContent = "none"; paint(state); };
    for (const input of block.querySelectorAll("input[type=radio]")) input.onchange = updateSubmit;
    draw(state);
    return state;
  });
  $("case").hidden = false; $("login").hidden = true; $("finished").hidden = true;
  updateSubmit();
}

function scroll(state, step) {
  const n = state.image.shape[0];
  state.index = Math.min(n - 1, Math.max(0, state.index + step));
  state.block.querySelector("input[type=range]").value = state.index;
  draw(state);
}

async function draw(state) {
  const id = ++state.drawId;
  const sl = await MF.slice(`api/image/${state.image.id}/${state.index}`, false);
  if (id !== state.drawId) return;
  state.slice = sl;
  const [sz, sy, sx] = state.image.spacing;
  const [w, h] = MF.displaySize(sl.rows, sl.cols, sy, sx, R.blocks.length > 1 ? 520 : 680);
  state.canvas.width = w; state.canvas.height = h;
  paint(state);
  state.block.querySelector(".slice").textContent = `slice ${state.index + 1} / ${state.image.shape[0]}`;
  document.body.dataset.renders = String(+document.body.dataset.renders + 1);
}

function paint(state) {
  if (!state.slice) return;
  const ctx = MF.blit(state.canvas, MF.windowed(state.slice, R.width, R.level, false));
  if (state.click && state.click[0] === state.index) {
    const x = (state.click[2] + 0.5) * state.canvas.width / state.slice.cols;
    const y = (state.click[1] + 0.5) * state.canvas.height / state.slice.rows;
    ctx.strokeStyle = "#ff3b3b"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, 12, 0, 2 * Math.PI); ctx.stroke();
  }
}

function mark(state, ev) {
  const box = state.canvas.getBoundingClientRect();
  const col = Math.min(state.slice.cols - 1, Math.floor((ev.clientX - box.left) / box.width * state.slice.cols));
  const row = Math.min(state.slice.rows - 1, Math.floor((ev.clientY - box.top) / box.height * state.slice.rows));
  state.click = [state.index, row, col];
  state.block.querySelector(".where").textContent = `slice ${state.index + 1}, row ${row}, column ${col}`;
  paint(state);
}

function ratingOf(k, key) {
  const checked = document.querySelector(`input[name=${key}-${k}]:checked`);
  return checked ? +checked.value : null;
}

function updateSubmit() {
  $("submit").disabled = !R.blocks.every((_, k) => QUESTIONS.every(([key]) => ratingOf(k, key) !== null));
}

async function submit() {
  $("submit").disabled = true;
  const images = R.blocks.map((state, k) => ({ image: state.image.id, malignancy: ratingOf(k, "malignancy"),
    manipulation: ratingOf(k, "manipulation"), click: state.click }));
  try {
    await MF.json("api/answer", { reader: R.reader, case: R.caseData.id, images });
    message("");
    await next();
  } catch (err) { message(String(err.message || err)); updateSubmit(); }
}

function setWindow(width, level) {
  R.width = width; R.level = level;
  for (const b of document.querySelectorAll("[data-preset]")) {
    const [w, l] = MF.PRESETS[b.dataset.preset];
    b.classList.toggle("on", w === width && l === level);
  }
  R.blocks.forEach(paint);
}

for (const b of document.querySelectorAll("[data-preset]")) b.onclick = () => setWindow(...MF.PRESETS[b.dataset.preset]);
$("login").onsubmit = async (ev) => {
  ev.preventDefault();
  R.reader = $("reader-name").value.trim();
  try { await next(); } catch (err) { message(String(err.message || err)); }
};
$("submit").onclick = submit;
document.addEventListener("keydown", (ev) => {
  const step = { ArrowUp: -1, ArrowDown: 1, PageUp: -10, PageDown: 10 }[ev.key];
  if (step && R.blocks[R.active]) { ev.preventDefault(); scroll(R.blocks[R.active], step); }
});
setWindow(R.width, R.level);
