// The network overview: jobs finished per second, job latency percentiles and the queue, from the
// node's /metrics (counters, so sampled every few seconds; history kept while the dashboard is open).

import { api } from './api.js';
import { fill, h, errorBox } from './dom.js';
import { lineChart } from './charts.js';

const EVERY = 2000;
const KEEP = 300; // seconds of history
const samples = []; // [{t, metrics: Map}]

export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function series(name, pick) {
  return { name, points: samples.map((s, i) => [s.t, pick(s, samples[i - 1])]).filter((p) => p[1] !== null && !Number.isNaN(p[1])) };
}

const value = (s, key) => s.metrics.get(key) ?? 0;
const finished = (s) => value(s, 'shoal_jobs{state="completed"}') + value(s, 'shoal_jobs{state="failed"}') + value(s, 'shoal_jobs{state="cancelled"}');

export function overviewPage(view) {
  const message = h('div');
  const charts = h('div', { class: 'charts', id: 'charts' });
  const totals = h('p', { class: 'muted', id: 'overview-totals' });
  view.append(h('h1', {}, 'Network overview'), totals, message, charts);

  function render() {
    const last = samples.at(-1);
    if (!last) return;
    totals.textContent = ['pending', 'running', 'completed', 'failed', 'cancelled']
      .map((s) => `${value(last, `shoal_jobs{state="${s}"}`)} ${s}`).join(' · ') + ` · ${value(last, 'shoal_peers')} peers`;
    fill(charts, 
      lineChart('Jobs finished per second', [series('jobs/s', (s, prev) => (prev ? Math.max(0, (finished(s) - finished(prev)) / (s.t - prev.t)) : null))]),
      lineChart('Job latency (last 1,000 jobs)', ['0.5', '0.9', '0.99'].map((q) =>
        series(`p${Number(q) * 100}`, (s) => s.metrics.get(`shoal_job_latency_seconds{quantile="${q}"}`) ?? null)), { unit: ' s' }),
      lineChart('Queue', [series('pending', (s) => value(s, 'shoal_jobs{state="pending"}')),
        series('running', (s) => value(s, 'shoal_jobs{state="running"}')),
        series('compute backlog', (s) => value(s, 'shoal_backlog'))]));
  }

  async function sample() {
    try {
      const response = await api('/metrics');
      const t = Date.now() / 1000;
      samples.push({ t, metrics: parseMetrics(await response.text()) });
      while (samples.length && samples[0].t < t - KEEP) samples.shift();
      fill(message, );
      render();
    } catch (error) {
      fill(message, errorBox(error));
    }
  }
  sample();
  const timer = setInterval(sample, EVERY);
  return () => clearInterval(timer);
}
