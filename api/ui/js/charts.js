// Charts: uPlot (canvas) for the curves, a small hand-made SVG for the per-layer bars.

import uPlot from "../vendor/uPlot.esm.js";
import { h } from "./dom.js";

export const COLORS = { blue: "#2563eb", orange: "#ea580c", green: "#16a34a", grey: "#94a3b8", purple: "#7c3aed" };

/**
 * A line chart that grows as data arrives. Series are named by label and may be added later (a baseline's
 * finetune run appears only when it starts); a series on scale "pct" is drawn against a right-hand
 * 0–100 % axis.
 */
export class LineChart {
  constructor(container, { series, xLabel = "epoch", yLabel = null, pctLabel = null, height = 220 }) {
    this.container = container;
    this.height = height;
    // The axes are drawn on a canvas: screen readers (and tests) read what the chart shows here.
    container.setAttribute("role", "img");
    container.setAttribute("aria-label", [yLabel, pctLabel].filter(Boolean).join(" and ") + ` by ${xLabel}`);
    this.labels = series.map((s) => s.label);
    this.data = [[], ...series.map(() => [])];
    const hasPct = series.some((s) => s.scale === "pct");
    const hasY = series.some((s) => s.scale !== "pct");
    // Epochs and steps are whole numbers: no ticks in between.
    const axes = [{ label: xLabel, size: 40, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000] }];
    if (hasY) axes.push({ scale: "y", size: 60, label: yLabel, labelSize: yLabel ? 18 : 0 });
    if (hasPct) {
      axes.push({ scale: "pct", side: 1, size: 56, grid: { show: !hasY }, label: pctLabel, labelSize: pctLabel ? 18 : 0,
        values: (u, ticks) => ticks.map((t) => `${Math.round(t * 100)}%`) });
    }
    this.plot = new uPlot({
      width: this.width(), height,
      scales: { x: { time: false }, pct: { range: [0, 1] } },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: xLabel }, ...series.map(seriesOptions)],
      axes,
    }, this.data, container);
    this.resize = () => this.plot.setSize({ width: this.width(), height });
    window.addEventListener("resize", this.resize);
  }

  width() { return Math.max(320, this.container.clientWidth || 560); }

  addSeries(series) {
    this.labels.push(series.label);
    this.data.push(this.data[0].map(() => null));
    this.plot.addSeries(seriesOptions(series), this.labels.length);
  }

  has(label) { return this.labels.includes(label); }

  /** Replace all points: ``x`` and one array per series, in the order given at construction. */
  set(x, ...ys) {
    this.data = [x, ...this.labels.map((_, i) => ys[i] ?? x.map(() => null))];
    this.plot.setData(this.data);
    this.plot.setLegend();
    this.container.dataset.points = String(this.points);
  }

  /** Set the values ({label: y}) at x, keeping x increasing (a resumed run repeats an epoch). */
  put(x, values) {
    let at = this.data[0].indexOf(x);
    if (at < 0) {
      at = this.data[0].findIndex((v) => v > x);
      if (at < 0) at = this.data[0].length;
      this.data.forEach((column, i) => column.splice(at, 0, i === 0 ? x : null));
    }
    for (const [label, y] of Object.entries(values)) {
      const i = this.labels.indexOf(label);
      if (i >= 0 && y !== undefined) this.data[i + 1][at] = y;
    }
    this.plot.setData(this.data);
    this.plot.setLegend();
    this.container.dataset.points = String(this.points);
  }

  get points() { return this.data[0].length; }

  destroy() { window.removeEventListener("resize", this.resize); this.plot.destroy(); }
}

function seriesOptions(s) {
  return {
    label: s.label, stroke: s.color, width: s.width || 2, scale: s.scale || "y", dash: s.dash, spanGaps: true,
    points: { size: 5 }, // uPlot shows them only while the points are sparse: one epoch is still visible
    // Away from the cursor the legend shows each series' latest value, never a blank.
    value: (u, v, sidx, idx) => format(idx === null || idx === undefined ? latest(u.data[sidx]) : v, s.scale),
  };
}

function latest(column) {
  for (let i = column.length - 1; i >= 0; i--) if (column[i] !== null && column[i] !== undefined) return column[i];
  return null;
}

function format(v, scale) {
  if (v === null || v === undefined) return "–";
  return scale === "pct" ? `${(100 * v).toFixed(2)} %` : v.toFixed(4);
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  el.append(...children);
  return el;
}

/** Channels per layer: a light bar for before, a dark one for after, one pair per layer. */
export function layerBars(layers, { height = 260 } = {}) {
  const width = Math.max(560, 100 + layers.length * 28);
  const top = 12, bottom = 80, left = 44, right = 56;
  const max = Math.max(1, ...layers.map((l) => l.channels_before));
  const plotH = height - top - bottom;
  const step = (width - left - right) / Math.max(1, layers.length);
  const bar = Math.min(22, step * 0.7);
  const y = (v) => top + plotH * (1 - v / max);
  const svg = s("svg", { class: "bars", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "channels per layer, before and after pruning" });
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    const v = Math.round(max * t);
    svg.append(s("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, String(v)));
  }
  layers.forEach((layer, i) => {
    const x = left + i * step + (step - bar) / 2;
    const tip = `${layer.name}: ${layer.channels_before} → ${layer.channels_after} channels`;
    svg.append(
      s("rect", { x, y: y(layer.channels_before), width: bar, height: plotH - (y(layer.channels_before) - top), class: "before" }, s("title", {}, tip)),
      s("rect", { x, y: y(layer.channels_after), width: bar, height: plotH - (y(layer.channels_after) - top), class: "after" }, s("title", {}, tip)),
      s("text", { x: x + bar / 2, y: top + plotH + 10, class: "label", transform: `rotate(45 ${x + bar / 2} ${top + plotH + 10})` }, layer.name));
  });
  return h("div.bars-wrap", {}, svg,
    h("div.legend", {}, h("span.swatch.before"), "before ", h("span.swatch.after"), "after"));
}
