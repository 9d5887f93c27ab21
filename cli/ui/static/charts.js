// Line charts as inline SVG: series of [time, value] points over a shared time axis.

import { h } from './dom.js';

const W = 560;
const H = 180;
const PAD = { left: 48, right: 12, top: 12, bottom: 22 };

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/** series: [{name, points: [[t, v], …]}], drawn over what they hold (30 s to `keep` s); unit: axis suffix. */
export function lineChart(title, series, { keep = 300, unit = '' } = {}) {
  const now = Date.now() / 1000;
  const first = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
  const span = Math.min(keep, Math.max(30, now - first));
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  const x = (t) => PAD.left + ((t - (now - span)) / span) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  const svg = h('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  for (const f of [0, 0.5, 1]) {
    svg.append(h('line', { x1: PAD.left, x2: W - PAD.right, y1: y(max * f), y2: y(max * f), class: 'gridline' }),
      h('text', { x: PAD.left - 6, y: y(max * f) + 4, class: 'axis', 'text-anchor': 'end' }, `${+(max * f).toPrecision(3)}${unit}`));
  }
  svg.append(h('text', { x: PAD.left, y: H - 6, class: 'axis' }, span < 120 ? `${Math.round(span)} s ago` : `${Math.round(span / 60)} min ago`),
    h('text', { x: W - PAD.right, y: H - 6, class: 'axis', 'text-anchor': 'end' }, 'now'));
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => p[0] >= now - span).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
    if (pts.length) svg.append(h('polyline', { points: pts.join(' '), class: `series s${i}` }));
  });
  const legend = h('ul', { class: 'chart-legend' }, series.map((s, i) => {
    const last = s.points.at(-1);
    return h('li', {}, h('span', { class: `key s${i}` }), `${s.name} `, h('b', {}, last ? `${+last[1].toPrecision(3)}${unit}` : '–'));
  }));
  return h('figure', { class: 'chart-box' }, h('figcaption', {}, title), svg, legend);
}
