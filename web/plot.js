// Small time-series charts on <canvas>: no library, no network.

const PAD = { left: 60, right: 10, top: 10, bottom: 20 };

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth);
  const h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

/**
 * Draw lines of [time_s, value] points over the last `windowS` seconds before `now`.
 * series: [{label, color, points, dash?}]; a null value breaks its line.
 */
export function drawChart(canvas, { series, now, windowS = 60, unit = "ms", floor = 10, ceiling = null }) {
  const { ctx, w, h } = fitCanvas(canvas);
  const x0 = PAD.left;
  const x1 = w - PAD.right;
  const y0 = h - PAD.bottom;
  const y1 = PAD.top;
  const start = now - windowS;

  let max = floor;
  for (const s of series) for (const [t, v] of s.points) if (t >= start && v != null) max = Math.max(max, v);
  if (ceiling != null) max = Math.min(max, ceiling);
  const step = niceStep(max / 4);
  const top = Math.ceil(max / step) * step || step;
  const xOf = (t) => x0 + ((t - start) / windowS) * (x1 - x0);
  const yOf = (v) => y0 - (Math.min(v, top) / top) * (y0 - y1);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8b95a1";
  ctx.strokeStyle = "#2a323c";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = 0; v <= top + step / 2; v += step) {
    const y = Math.round(yOf(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(x0, y);
    ctx.lineTo(x1, y);
    ctx.stroke();
    ctx.fillText(`${+v.toPrecision(3)} ${unit}`, x0 - 4, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const frac of [0, 0.5, 1]) {
    const label = frac === 1 ? "now" : `−${Math.round(windowS * (1 - frac))} s`;
    ctx.fillText(label, x0 + frac * (x1 - x0), y0 + 4);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(x0, y1 - 2, x1 - x0, y0 - y1 + 4);
  ctx.clip();
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.8;
    ctx.setLineDash(s.dash ?? []);
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of s.points) {
      if (t < start - 1 || v == null) {
        pen = false;
        continue;
      }
      if (pen) ctx.lineTo(xOf(t), yOf(v));
      else ctx.moveTo(xOf(t), yOf(v));
      pen = true;
    }
    ctx.stroke();
  }
  ctx.restore();
}

/** A legend whose entries carry each series' latest value, so numbers are readable at a glance. */
export function legendHtml(entries) {
  return entries
    .map(({ label, color, value, dash }) => {
      const swatch = dash ? `border:2px dashed ${color};background:none` : `background:${color}`;
      return `<span><i style="${swatch}"></i>${escapeHtml(label)} <b class="num">${value}</b></span>`;
    })
    .join("");
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export const PALETTE = ["#5aa9e6", "#e8b339", "#3ec27a", "#e8584f", "#b38ce6", "#4fd1c5", "#f08bb5", "#c0c86b"];
