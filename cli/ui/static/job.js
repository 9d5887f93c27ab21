// A job: its state and why it waits, its spec, executions per node, the event timeline (the
// node's event stream), its output as it is written, its results, and a cancel button.

import { api, download, live, ordered, streamText } from './api.js';
import { fill, h, badge, when, duration, errorBox, patch, short, coalesce, TERMINAL } from './dom.js';

const PHASES = ['submitted', 'announced', 'first_bid', 'accepted', 'started', 'proposed', 'finished'];
const LOGS_KEPT = 256 * 1024; // characters of output the page holds: the job's results have all of it
const WAITING_POLL_MS = 5000; // a waiting job's reason (its place in the queue) changes with no event of its own

export function jobPage(view, params, id) {
  const header = h('div', { class: 'title' }, h('h1', { class: 'mono' }, id));
  const message = h('div');
  const summary = h('section', { id: 'job-summary' });
  const executions = h('section', { id: 'job-executions' });
  const results = h('section', { id: 'job-results' });
  const timeline = h('ol', { class: 'timeline', id: 'job-timeline' });
  const logs = h('pre', { class: 'logs', id: 'job-logs' });
  const spec = h('pre', { class: 'spec', id: 'job-spec' });
  const stream = h('select', { id: 'job-output-stream', 'aria-label': 'stream', onchange: () => followLogs() },
    h('option', { value: 'stdout' }, 'stdout'), h('option', { value: 'stderr' }, 'stderr'));
  view.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', short(id)),
    header, message,
    h('div', { class: 'columns' },
      h('div', {}, summary, executions, results,
        h('section', {}, h('h2', {}, 'Output ', stream), logs)),
      h('div', {}, h('section', {}, h('h2', {}, 'Events'), timeline),
        h('section', {}, h('h2', {}, 'Spec'), spec))));

  const logsAbort = { controller: null };
  const inOrder = ordered(); // the describe on load and on each event, and the cancel's answer
  let cancelling = false;
  let ended = false;

  async function load() {
    let description;
    try {
      description = await inOrder(api(`/v1/jobs/${id}`));
    } catch (error) {
      fill(message, errorBox(error));
      return;
    }
    if (description === undefined) return;
    fill(message, );
    render(description);
  }

  // Patched, not rebuilt: the page re-renders on each of the job's events, under the user's pointer.
  function render({ job, executions: runs, phases }) {
    ended = TERMINAL.has(job.state);
    const cancel = TERMINAL.has(job.state) ? null
      : h('button', { class: 'danger', id: 'cancel-job', onclick: cancelJob, disabled: cancelling }, 'Cancel job');
    patch(header, h('h1', { class: 'mono' }, job.id), badge(job.state), cancel);
    const started = phases.submitted;
    patch(summary, 
      h('h2', {}, TERMINAL.has(job.state) ? 'Outcome' : 'Why waiting'),
      h('p', { class: 'reason', id: 'job-reason' }, job.reason || '—'),
      h('dl', { class: 'facts' },
        h('dt', {}, 'engine'), h('dd', {}, job.spec.engine.name),
        h('dt', {}, 'deal'), h('dd', {}, `concurrency ${job.spec.deal?.concurrency ?? 1}, confidence ${job.spec.deal?.confidence ?? 0}`),
        h('dt', {}, 'created'), h('dd', {}, when(job.created_at)),
        h('dt', {}, 'attempt'), h('dd', {}, String(job.attempt)),
        job.cached_from ? [h('dt', {}, 'cached from'), h('dd', {}, h('a', { href: `#/jobs/${job.cached_from}` }, short(job.cached_from)))] : null),
      h('ol', { class: 'phases' }, PHASES.filter((p) => phases[p]).map((p) =>
        h('li', {}, h('b', {}, p.replace('_', ' ')), ` +${duration(phases[p] - started)}`))));
    patch(executions, h('h2', {}, `Executions (${runs.length})`), runs.length
      ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Node', 'State', 'Reason', 'Created', 'Updated', 'Exit'].map((t) => h('th', {}, t)))),
        h('tbody', {}, runs.map((x) => h('tr', {},
          h('td', { class: 'mono' }, h('a', { href: `#/nodes/${x.node_id}`, title: x.node_id }, short(x.node_id))),
          h('td', {}, badge(x.state)),
          h('td', { class: 'reason' }, x.error || x.reason),
          h('td', {}, when(x.created_at)),
          h('td', {}, `+${duration(x.updated_at - x.created_at)}`),
          h('td', {}, x.result ? String(x.result.exit_code) : '')))))
      : h('p', { class: 'muted' }, 'no node has bid yet'));
    const result = job.result;
    patch(results, h('h2', {}, 'Results'), result
      ? h('dl', { class: 'facts' },
        h('dt', {}, 'exit code'), h('dd', { id: 'job-exit' }, String(result.exit_code)),
        h('dt', {}, 'CID'), h('dd', { class: 'mono', id: 'job-cid' }, result.cid || '(kept in the record)'),
        h('dt', {}, 'ran'), h('dd', {}, `${result.engine} ${result.engine_version} · ${duration((result.finished_at || 0) - (result.started_at || 0))}`),
        h('dt', {}, ''), h('dd', {}, h('button', { onclick: () => download(`/v1/jobs/${job.id}/results`, `${job.id}.tar`).catch((e) => fill(message, errorBox(e))) }, 'Download results (tar)')))
      : h('p', { class: 'muted' }, TERMINAL.has(job.state) ? 'none' : 'none yet'));
    spec.textContent = JSON.stringify(job.spec, null, 2);
  }

  async function cancelJob(event) {
    cancelling = true;
    event.target.disabled = true;
    try {
      const description = await inOrder(api(`/v1/jobs/${id}/cancel`, { method: 'POST' }));
      if (description !== undefined) render(description);
    } catch (error) {
      fill(message, errorBox(error));
    } finally {
      cancelling = false;
      event.target.disabled = false; // gone from the page once the job shows cancelled
    }
  }

  function followLogs() {
    logsAbort.controller?.abort();
    const controller = new AbortController();
    logsAbort.controller = controller;
    logs.textContent = '';
    let shown = 0;
    streamText(`/v1/jobs/${id}/logs?stream=${stream.value}&follow=true`, (text) => {
      logs.append(text);
      shown += text.length;
      if (shown > 2 * LOGS_KEPT) { // a page holding megabytes of text stops answering
        const tail = logs.textContent.slice(-LOGS_KEPT);
        logs.textContent = `[earlier output not shown here: download the results for all of it]\n${tail}`;
        shown = logs.textContent.length;
      }
      logs.scrollTop = logs.scrollHeight;
    }, controller.signal).catch((error) => {
      if (error.name !== 'AbortError') logs.append(`\n[${error.message}]`);
    });
  }

  const refresh = coalesce(() => load(), 200);
  const closeLive = live([id], '', {
    event: (_, e) => {
      timeline.append(h('li', { dataset: { kind: e.kind } }, h('time', {}, new Date(e.at * 1000).toLocaleTimeString()),
        h('b', {}, e.kind), e.node_id ? h('span', { class: 'mono', title: e.node_id }, short(e.node_id)) : null,
        h('span', {}, e.message)));
      refresh('job');
    },
    end: () => refresh('job'),
    gone: (_, text) => fill(message, errorBox(new Error(text))),
  });
  load();
  followLogs();
  const poll = setInterval(() => { if (!ended && !document.hidden) refresh('job'); }, WAITING_POLL_MS);
  return () => { clearInterval(poll); closeLive(); logsAbort.controller?.abort(); };
}
