// Shared by the viewer and the reader page: token-carrying requests, raw slices, windowing, drawing.
"use strict";

const MF = (() => {
  const PRESETS = { lung: [1500, -600], mediastinum: [350, 40], bone: [1800, 400] };

  function url(path) {
    return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
  }

  async function json(path, body) {
    const options = body === undefined ? {} :
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const response = await fetch(url(path), options);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // A slice as {values, rows, cols}; int16 HU, or float32 for a heat map.
  async function slice(path, float) {
    const response = await fetch(url(path));
    if (!response.ok) throw new Error("slice " + path + ": " + response.status);
    const buffer = await response.arrayBuffer();
    return { values: float ? new Float32Array(buffer) : new Int16Array(buffer),
             rows: +response.headers.get("X-Rows"), cols: +response.headers.get("X-Cols") };
  }

  // Grey RGBA image of a slice through window W/L; `flip` turns rows upside down (head up).
  function windowed(sl, width, level, flip) {
    const image = new ImageData(sl.cols, sl.rows);
    const px = image.data, low = level - width / 2, scale = 255 / width;
    for (let r = 0; r < sl.rows; r++) {
      const src = (flip ? sl.rows - 1 - r : r) * sl.cols;
      let dst = r * sl.cols * 4;
      for (let c = 0; c < sl.cols; c++, dst += 4) {
        let g = Math.round((sl.values[src + c] - low) * scale);
        g = g < 0 ? 0 : g > 255 ? 255 : g;
        px[dst] = px[dst + 1] = px[dst + 2] = g;
        px[dst + 3] = 255;
      }
    }
    return image;
  }

  // Draw an ImageData onto `canvas` stretched to the canvas size, without smoothing.
  function blit(canvas, image) {
    const off = document.createElement("canvas");
    off.width = image.width; off.height = image.height;
    off.getContext("2d").putImageData(image, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    return ctx;
  }

  // Display size of a slice with rows×cols voxels of rowMm×colMm, fitted into maxPx.
  function displaySize(rows, cols, rowMm, colMm, maxPx) {
    const h = rows * rowMm / colMm, scale = maxPx / Math.max(cols, h);
    return [Math.max(1, Math.round(cols * scale)), Math.max(1, Math.round(h * scale))];
  }

  return { PRESETS, url, json, slice, windowed, blit, displaySize };
})();
