// The dashboard: a hash router over the pages. Each page renders into the view and returns a
// function that stops what it started (live streams, timers) when another page is shown.

import { api, token } from './api.js';
import { fill, h, errorBox, short } from './dom.js';
import { jobsPage } from './jobs.js';
import { jobPage } from './job.js';
import { sweepsPage, sweepPage } from './sweeps.js';
import { nodesPage, nodePage } from './nodes.js';
import { overviewPage } from './overview.js';

const routes = [
  [/^\/jobs\/([^/]+)$/, jobPage, 'jobs'],
  [/^\/jobs$/, jobsPage, 'jobs'],
  [/^\/sweeps\/([^/]+)$/, sweepPage, 'sweeps'],
  [/^\/sweeps$/, sweepsPage, 'sweeps'],
  [/^\/nodes\/([^/]+)$/, nodePage, 'nodes'],
  [/^\/nodes$/, nodesPage, 'nodes'],
  [/^\/overview$/, overviewPage, 'overview'],
];

let stop = () => {};

function show() {
  const [path, query = ''] = (location.hash.slice(1) || '/jobs').split('?');
  const params = new URLSearchParams(query);
  stop();
  const view = document.getElementById('view');
  fill(view);
  for (const [pattern, page, section] of routes) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.nav === section);
    try {
      stop = page(view, params, ...match.slice(1).map(decodeURIComponent)) || (() => {});
    } catch (error) {
      view.append(errorBox(error));
      stop = () => {};
    }
    return;
  }
  view.append(h('p', {}, 'No such page. ', h('a', { href: '#/jobs' }, 'Jobs')));
  stop = () => {};
}

async function nodeBadge() {
  const where = document.getElementById('node');
  try {
    const status = await api('/v1/node');
    fill(where, h('a', { href: `#/nodes/${status.peer_id}`, title: status.peer_id },
      `node ${short(status.peer_id)} · v${status.version}`));
  } catch (error) {
    fill(where, h('span', { class: 'warn', title: error.message }, 'node: not reachable'));
  }
}

if (token) {
  // A hidden tab stops its page: each page holds a live stream or two, and a browser keeps six connections to
  // a host: three job pages in tabs took them all, and every other tab (a cancel, a page) waited forever.
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) {
      stop();
      stop = () => {};
    } else {
      show();
    }
  });
  window.addEventListener('hashchange', show);
  show();
  nodeBadge();
} else {
  document.getElementById('view').append(h('div', { class: 'error', id: 'no-key', role: 'alert' },
    'This dashboard needs its key: run ', h('code', {}, 'shoal ui'), ' and open the address it prints ',
    '(it carries the key, as http://127.0.0.1:PORT/#key=…).'));
}
