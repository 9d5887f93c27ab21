// Jobs: the user's jobs, a page at a time (the node pages by limit/offset, newest first), with
// states kept current by the node's event streams of the jobs shown.

import { api, live, ordered } from './api.js';
import { fill, h, badge, age, errorBox, patch, short, coalesce, STATES, TERMINAL } from './dom.js';

export const PAGE = 50;

export function jobsPage(view, params) {
  const state = params.get('state') || '';
  const selector = params.get('selector') || ''; // jobs whose selector holds this text, e.g. zone=eu
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  const rows = new Map(); // job id -> {tr, job}
  let closeLive = () => {};
  let loadedAt = 0;
  let stopped = false; // the page was left: a load still under way opens no stream nobody would close

  const hashOf = (changes) => {
    const next = new URLSearchParams({ state, selector, offset: String(offset), ...changes });
    for (const [k, v] of [...next]) if (!v || v === '0') next.delete(k);
    return `#/jobs${next.toString() ? `?${next}` : ''}`;
  };
  const go = (changes) => { location.hash = hashOf(changes); };

  const filter = h('select', { id: 'state-filter', 'aria-label': 'state', onchange: (e) => go({ state: e.target.value, offset: '0' }) },
    h('option', { value: '' }, 'all states'),
    STATES.map((s) => h('option', { value: s, selected: s === state }, s)));
  const label = h('input', { id: 'label-filter', type: 'search', value: selector, size: 18,
    placeholder: 'label, e.g. zone=eu', 'aria-label': 'label', title: 'only jobs whose selector asks for this label' });
  const labelForm = h('form', { class: 'search', onsubmit: (e) => { e.preventDefault(); go({ selector: label.value.trim(), offset: '0' }); } },
    label);
  const search = h('input', { id: 'job-search', type: 'search', placeholder: 'job id (j-…) or part of one on this page', size: 44 });
  const searchForm = h('form', { class: 'search', onsubmit: (e) => { e.preventDefault(); find(search.value.trim()); } }, search,
    h('button', { type: 'submit' }, 'Find'));
  search.addEventListener('input', () => narrow(search.value.trim()));
  const summary = h('span', { class: 'summary', id: 'jobs-summary' }, 'loading…');
  const pager = h('span', { class: 'pager' });
  const body = h('tbody', { id: 'jobs-body' });
  const message = h('div');
  view.append(
    h('h1', {}, 'Jobs'),
    h('div', { class: 'toolbar' }, filter, labelForm, searchForm, summary, pager),
    message,
    h('table', { class: 'list', id: 'jobs-table' },
      h('thead', {}, h('tr', {}, ['Job', 'State', 'Engine', 'Reason', 'Created', 'Updated'].map((t) => h('th', {}, t)))),
      body));

  function row(job) {
    return h('tr', { dataset: { id: job.id } },
      h('td', { class: 'mono' }, h('a', { href: `#/jobs/${job.id}`, title: job.id }, short(job.id))),
      h('td', {}, badge(job.state)),
      h('td', {}, job.spec.engine.name),
      h('td', { class: 'reason', title: job.reason }, job.reason),
      h('td', { title: new Date(job.created_at * 1000).toLocaleString() }, age(job.created_at)),
      h('td', {}, age(job.updated_at)));
  }

  // A row shown already is patched, never replaced: the list updates under the user's pointer.
  function put(job) {
    const fresh = row(job);
    const old = rows.get(job.id);
    const tr = old ? patch(old.tr, ...fresh.childNodes) : fresh;
    rows.set(job.id, { tr, job });
    return tr;
  }

  function narrow(text) {
    for (const { tr, job } of rows.values()) tr.hidden = Boolean(text) && !job.id.includes(text);
  }

  async function find(text) {
    if (!text) return;
    if (/^j-[0-9a-f]{32}$/.test(text)) { location.hash = `#/jobs/${text}`; return; }
    if (/^s-[0-9a-f]{32}$/.test(text)) { location.hash = `#/sweeps/${text}`; return; }
    narrow(text);
  }

  const rowOrder = new Map(); // job id -> its describes, in order
  const refresh = coalesce(async (id) => {
    if (!rowOrder.has(id)) rowOrder.set(id, ordered());
    try {
      const description = await rowOrder.get(id)(api(`/v1/jobs/${id}`));
      if (description !== undefined && rows.has(id)) put(description.job);
    } catch { /* gone: keep the row as it was */ }
  });

  const inOrder = ordered();
  async function load() {
    loadedAt = performance.now();
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (state) query.set('state', state);
    if (selector) query.set('selector', selector);
    let list;
    try {
      list = await inOrder(api(`/v1/jobs?${query}`));
    } catch (error) {
      if (stopped) return;
      fill(message, errorBox(error));
      summary.textContent = '';
      return;
    }
    if (list === undefined || stopped) return;
    fill(message, );
    const listed = new Set(list.jobs.map((job) => job.id));
    for (const id of [...rows.keys()]) if (!listed.has(id)) { rows.delete(id); rowOrder.delete(id); }
    const past = !list.jobs.length && offset > 0 && offset >= list.total; // an old link, or jobs since gone
    const lastPage = Math.max(0, Math.floor((list.total - 1) / PAGE) * PAGE);
    patch(body, list.jobs.map(put), list.jobs.length ? null
      : h('tr', {}, h('td', { colspan: 6, class: 'empty' }, past
        ? [`this page is past the end (${list.total} ${list.total === 1 ? 'job' : 'jobs'}): `, h('a', { id: 'last-page', href: hashOf({ offset: String(lastPage) }) }, 'the last page')]
        : state || selector ? ['no', state, 'jobs', selector && `asking for ${selector}`].filter(Boolean).join(' ') : 'no jobs yet: shoal run …')));
    narrow(search.value.trim());
    const last = Math.min(offset + list.jobs.length, list.total);
    summary.textContent = list.jobs.length ? `${offset + 1}–${last} of ${list.total}` : '';
    patch(pager,
      h('button', { disabled: offset === 0, onclick: () => go({ offset: String(Math.max(0, offset - PAGE)) }) }, '‹ newer'),
      h('button', { disabled: last >= list.total, onclick: () => go({ offset: String(offset + PAGE) }) }, 'older ›'));
    view.dataset.loadedMs = String(Math.round(performance.now() - loadedAt));
    follow(offset === 0 ? { what: 'jobs', total: list.total, newest: list.jobs[0]?.id, state, selector } : null);
  }

  function follow(watch) {
    closeLive();
    const open = [...rows.values()].filter(({ job }) => !TERMINAL.has(job.state)).map(({ job }) => job.id);
    closeLive = live(open, watch, {
      event: (id) => refresh(id),
      end: (id, final) => {
        const entry = rows.get(id);
        if (entry) put({ ...entry.job, state: final, updated_at: Date.now() / 1000 });
        refresh(id);
      },
      list: () => reload(),
    });
  }

  const reloads = coalesce(() => load(), 300);
  const reload = () => reloads('list');
  const ticker = setInterval(() => {
    for (const { tr, job } of rows.values()) {
      tr.cells[4].textContent = age(job.created_at);
      tr.cells[5].textContent = age(job.updated_at);
    }
  }, 5000);
  load();
  return () => { stopped = true; reloads.cancel(); refresh.cancel(); closeLive(); clearInterval(ticker); };
}
