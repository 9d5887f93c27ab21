// Sweeps: the list, and a sweep's page with its grid of index states (from the ranges the node
// describes it by), counts, failed indexes with exit codes and logs, and retry and cancel buttons.

import { api, live, ordered } from './api.js';
import { fill, h, badge, age, when, errorBox, patch, short, coalesce, STATES, TERMINAL } from './dom.js';

const PAGE = 50;
const MAX_CELLS = 5000; // beyond this a grid cell stands for several indexes

function countsBar(counts, total) {
  return h('div', { class: 'stack', title: STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(', ') },
    STATES.filter((s) => counts[s]).map((s) => {
      const part = h('span', { class: `fill ${s}` });
      part.style.width = `${(100 * counts[s]) / Math.max(1, total)}%`;
      return part;
    }));
}

export function sweepsPage(view, params) {
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  const body = h('tbody', { id: 'sweeps-body' });
  const summary = h('span', { class: 'summary' });
  const pager = h('span', { class: 'pager' });
  const message = h('div');
  view.append(h('h1', {}, 'Sweeps'), h('div', { class: 'toolbar' }, summary, pager), message,
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Sweep', 'State', 'Indexes', 'Progress', 'Reason', 'Created'].map((t) => h('th', {}, t)))),
      body));
  let closeLive = () => {};
  let watching = ''; // what the open stream follows: reopened only when that changes
  let stopped = false; // the page was left: a load still under way opens no stream nobody would close
  const inOrder = ordered();

  // Patched, not rebuilt (here and on a sweep's page): they re-render on every event, under the user's pointer.
  async function load() {
    let list;
    try {
      list = await inOrder(api(`/v1/sweeps?limit=${PAGE}&offset=${offset}`));
    } catch (error) {
      if (!stopped) fill(message, errorBox(error));
      return;
    }
    if (list === undefined || stopped) return;
    fill(message, );
    const past = !list.sweeps.length && offset > 0 && offset >= list.total; // an old link, or sweeps since gone
    const lastPage = Math.max(0, Math.floor((list.total - 1) / PAGE) * PAGE);
    patch(body, ...list.sweeps.map((s) => h('tr', { dataset: { id: s.id } },
      h('td', { class: 'mono' }, h('a', { href: `#/sweeps/${s.id}`, title: s.id }, short(s.id))),
      h('td', {}, badge(s.state)),
      h('td', {}, String(s.count)),
      h('td', {}, countsBar(s.counts, s.count)),
      h('td', { class: 'reason' }, s.reason),
      h('td', {}, age(s.created_at)))),
    list.sweeps.length ? null : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, past
      ? [`this page is past the end (${list.total} ${list.total === 1 ? 'sweep' : 'sweeps'}): `, h('a', { id: 'last-page', href: lastPage ? `#/sweeps?offset=${lastPage}` : '#/sweeps' }, 'the last page')]
      : 'no sweeps yet: shoal run … --param K=V1,V2')));
    const last = Math.min(offset + list.sweeps.length, list.total);
    summary.textContent = list.sweeps.length ? `${offset + 1}–${last} of ${list.total}` : '';
    patch(pager,
      h('button', { disabled: offset === 0, onclick: () => { location.hash = `#/sweeps?offset=${Math.max(0, offset - PAGE)}`; } }, '‹ newer'),
      h('button', { disabled: last >= list.total, onclick: () => { location.hash = `#/sweeps?offset=${offset + PAGE}`; } }, 'older ›'));
    const open = list.sweeps.filter((s) => !TERMINAL.has(s.state)).map((s) => s.id);
    const watch = offset === 0 ? { what: 'sweeps', total: list.total, newest: list.sweeps[0]?.id } : null;
    // a new stream replays each sweep's events from its start, and each event reloads the list: reopening it on
    // every reload looped twice a second while any sweep listed ran, the node replaying every history each time
    if (JSON.stringify([open, watch]) === watching) return;
    watching = JSON.stringify([open, watch]);
    closeLive();
    closeLive = live(open, watch, { event: () => reload(), end: () => reload(), list: () => reload() });
  }
  const reloads = coalesce(() => load(), 500);
  const reload = () => reloads('list');
  load();
  return () => { stopped = true; reloads.cancel(); closeLive(); };
}

/** The grid: one cell per index (or per group of indexes past MAX_CELLS), coloured by state. */
export function grid(count, ranges, truncated = false) {
  const per = Math.max(1, Math.ceil(count / MAX_CELLS));
  const cells = Math.ceil(count / per);
  const columns = Math.min(cells, 50);
  const size = cells > 1000 ? 8 : 14;
  const rows = Math.ceil(cells / columns);
  const svg = h('svg', { class: 'grid', id: 'sweep-grid', width: columns * size, height: rows * size,
    viewBox: `0 0 ${columns * size} ${rows * size}`, role: 'img', 'aria-label': `${count} indexes` });
  // A group shows its most telling state: failed over running over pending over the rest.
  const rank = { failed: 4, running: 3, pending: 2, cancelled: 1, completed: 0 };
  const stateOf = new Array(cells).fill(null);
  for (const r of ranges) {
    for (let i = Math.floor(r.first / per); i <= Math.floor(r.last / per); i += 1) {
      if (stateOf[i] === null || rank[r.state] > rank[stateOf[i]]) stateOf[i] = r.state;
    }
  }
  // Past the ranges the description carries (truncated), a cell's state is not known here: not shown as pending.
  for (let i = 0; i < cells; i += 1) stateOf[i] ??= truncated ? 'unknown' : 'pending';
  for (let i = 0; i < cells; i += 1) {
    const first = i * per;
    const label = per === 1 ? `index ${first}` : `indexes ${first}–${Math.min(count, first + per) - 1}`;
    svg.append(h('rect', { x: (i % columns) * size + 1, y: Math.floor(i / columns) * size + 1, width: size - 2,
      height: size - 2, rx: 2, class: `cell ${stateOf[i]}`, dataset: { state: stateOf[i] } },
    h('title', {}, `${label}: ${stateOf[i]}`)));
  }
  return svg;
}

export function sweepPage(view, params, id) {
  const header = h('div', { class: 'title' }, h('h1', { class: 'mono' }, id));
  const message = h('div');
  const counts = h('section', { id: 'sweep-counts' });
  const cells = h('section', { id: 'sweep-grid-section' });
  const failed = h('section', { id: 'sweep-failed' });
  const logs = h('pre', { class: 'logs', id: 'sweep-logs', hidden: true });
  view.append(h('p', { class: 'crumbs' }, h('a', { href: '#/sweeps' }, 'Sweeps'), ' / ', short(id)),
    header, message, counts, cells, logs, failed);

  const inOrder = ordered(); // the describe on load and on each event, and the answers of cancel and retry

  const busy = new Set(); // the actions whose answer is awaited: their buttons stay disabled through re-renders

  async function act(action, button) {
    busy.add(action);
    button.disabled = true;
    try {
      const description = await inOrder(api(`/v1/sweeps/${id}/${action}`, { method: 'POST' }));
      if (description !== undefined) render(description);
    } catch (error) {
      fill(message, errorBox(error));
    } finally {
      busy.delete(action);
      button.disabled = false;
    }
  }

  async function load() {
    try {
      const description = await inOrder(api(`/v1/sweeps/${id}`));
      if (description !== undefined) render(description);
    } catch (error) {
      fill(message, errorBox(error));
    }
  }

  function render({ sweep, ranges, ranges_truncated: truncated }) {
    fill(message, );
    patch(header, h('h1', { class: 'mono' }, sweep.id), badge(sweep.state),
      TERMINAL.has(sweep.state) ? null : h('button', { class: 'danger', id: 'cancel-sweep', disabled: busy.has('cancel'), onclick: (e) => act('cancel', e.target) }, 'Cancel sweep'),
      sweep.counts.failed ? h('button', { id: 'retry-sweep', disabled: busy.has('retry'), onclick: (e) => act('retry', e.target) }, `Retry ${sweep.counts.failed} failed`) : null);
    patch(counts,
      h('p', { class: 'reason' }, sweep.reason || ''),
      h('ul', { class: 'legend', id: 'sweep-legend' }, STATES.map((s) => h('li', {}, h('span', { class: `swatch ${s}` }),
        `${s} `, h('b', { dataset: { count: s } }, String(sweep.counts[s] || 0))))),
      h('p', { class: 'muted' }, `${sweep.count} indexes · engine ${sweep.spec.job.engine.name} · created ${when(sweep.created_at)}`,
        sweep.spec.confidence > 1 ? ` · each index verified by ${sweep.spec.confidence} nodes` : '',
        sweep.winner !== null && sweep.winner !== undefined ? ` · winner: index ${sweep.winner}` : ''));
    patch(cells, h('h2', {}, 'Indexes'), grid(sweep.count, ranges, truncated),
      truncated ? h('p', { class: 'muted', id: 'sweep-grid-truncated' }, `more ranges than the description carries: the grid shows indexes up to ${ranges.at(-1)?.last ?? 0}, grey past them; the counts above are all of them`) : null);
    loadFailed(sweep.counts.failed || 0);
  }

  const failedInOrder = ordered();

  async function loadFailed(n) {
    if (!n) {
      failedInOrder(Promise.resolve()); // a list asked for before is older than this: it is not shown
      fill(failed);
      return;
    }
    let list;
    try {
      list = await failedInOrder(api(`/v1/sweeps/${id}/indexes?state=failed&limit=100`));
    } catch (error) {
      fill(failed, errorBox(error));
      return;
    }
    if (list === undefined) return;
    patch(failed, h('h2', {}, `Failed indexes (${list.total}${list.total > list.indexes.length ? `, the first ${list.indexes.length}` : ''})`),
      h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'failed-table' },
      h('thead', {}, h('tr', {}, ['Index', 'Exit code', 'Reason', 'Node', 'Attempts', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, list.indexes.map((r) => h('tr', {},
        h('td', {}, String(r.index)),
        h('td', {}, r.result ? String(r.result.exit_code) : ''),
        h('td', { class: 'reason' }, r.reason),
        h('td', { class: 'mono' }, r.node_id ? h('a', { href: `#/nodes/${r.node_id}` }, short(r.node_id)) : ''),
        h('td', {}, String(r.attempts)),
        h('td', {}, h('button', { class: 'small', onclick: () => showLogs(r.index) }, 'logs'))))))));
  }

  async function showLogs(index) {
    logs.hidden = false;
    logs.textContent = `index ${index}: loading…`;
    logs.scrollIntoView({ block: 'nearest' });
    try {
      const [stdout, stderr] = await Promise.all(['stdout', 'stderr'].map(async (stream) =>
        (await api(`/v1/sweeps/${id}/indexes/${index}/logs?stream=${stream}`)).text()));
      logs.textContent = `index ${index} stdout:\n${stdout}\n\nstderr:\n${stderr}`;
    } catch (error) {
      logs.textContent = `index ${index}: ${error.message}`;
    }
  }

  const refresh = coalesce(() => load(), 300);
  const closeLive = live([id], '', { event: () => refresh('sweep'), end: () => refresh('sweep') });
  load();
  return () => closeLive();
}
