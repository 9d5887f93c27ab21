// Nodes: what the requester knows of each compute node (its last node info: engines, labels,
// capacity, running work, backlog) and how their results fared (reputation, quarantine). Node info
// has no stream: the page reads it again every few seconds while shown, patching the cards in place
// (a card rebuilt under the pointer would swallow a click on its link). Any peer can gossip node info under
// as many identities as it likes, and the requester keeps up to 4,096: the page shows the SHOWN it has known
// longest (its list's order; a flood's identities are the newest), and reads the list again only a while
// after the last read and render ended, longer when they took long (4,096 cards every 3 s froze the tab).

import { api, ordered } from './api.js';
import { fill, h, bytes, errorBox, patch, short } from './dom.js';

const EVERY = 3000;
const SHOWN = 200;

function bar(label, free, total, show) {
  const used = Math.max(0, total - free);
  const fill = h('span', { class: 'used' });
  fill.style.width = `${total ? (100 * used) / total : 0}%`;
  return h('div', { class: 'capacity', dataset: { resource: label } },
    h('span', { class: 'label' }, label),
    h('span', { class: 'bar', role: 'meter', 'aria-label': `${label} in use`, 'aria-valuemin': 0,
      'aria-valuemax': total, 'aria-valuenow': used }, fill),
    h('span', { class: 'value' }, `${show(free)} free of ${show(total)}`));
}

function card(info, reputation, wide) {
  const rep = reputation || {};
  const cores = (n) => `${Math.round(n * 100) / 100} CPU`;
  return h('article', { class: `node${wide ? ' wide' : ''}${rep.quarantined ? ' quarantined' : ''}`, dataset: { peer: info.peer_id } },
    h('h2', { class: 'mono' }, wide ? info.peer_id : h('a', { href: `#/nodes/${info.peer_id}`, title: info.peer_id }, short(info.peer_id))),
    h('p', {}, info.engines.map((e) => h('span', { class: 'chip engine' }, e)),
      Object.entries(info.labels || {}).map(([k, v]) => h('span', { class: 'chip label' }, `${k}=${v}`)),
      info.network ? h('span', { class: 'chip' }, 'network') : null),
    bar('cpu', info.free.cpu, info.total.cpu, cores),
    bar('memory', info.free.memory, info.total.memory, bytes),
    info.total.disk ? bar('disk', info.free.disk, info.total.disk, bytes) : null,
    h('dl', { class: 'facts' },
      h('dt', {}, 'running'), h('dd', { class: 'running' }, String(info.running)),
      h('dt', {}, 'backlog'), h('dd', {}, String(info.backlog)),
      h('dt', {}, 'per job'), h('dd', {}, `${cores(info.max_per_job.cpu)}, ${bytes(info.max_per_job.memory)}`),
      h('dt', {}, 'reputation'), h('dd', {}, rep.quarantined ? h('b', { class: 'warn' }, 'quarantined ') : null,
        `${rep.accepted || 0} accepted, ${rep.rejected || 0} rejected`),
      wide ? [h('dt', {}, 'addresses'), h('dd', { class: 'mono small' }, info.addrs.join('\n'))] : null));
}

function poll(view, render) {
  const message = h('div');
  const place = h('div', { class: 'nodes' });
  view.append(message, place);
  const inOrder = ordered();
  let timer = null;
  let stopped = false;
  async function load() {
    const started = performance.now();
    try {
      const list = await inOrder(api('/v1/nodes'));
      if (list === undefined) return;
      fill(message, );
      render(place, list);
    } catch (error) {
      fill(message, errorBox(error));
    } finally {
      if (!stopped) timer = setTimeout(load, Math.max(EVERY, 10 * (performance.now() - started)));
    }
  }
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

export function nodesPage(view) {
  const summary = h('p', { class: 'muted', id: 'nodes-summary' });
  view.append(h('h1', {}, 'Nodes'), summary);
  return poll(view, (place, list) => {
    const total = list.nodes.reduce((a, n) => a + n.total.cpu, 0);
    const free = list.nodes.reduce((a, n) => a + n.free.cpu, 0);
    const running = list.nodes.reduce((a, n) => a + n.running, 0);
    const more = list.nodes.length > SHOWN ? ` · the ${SHOWN} known longest shown (shoal nodes lists all)` : '';
    summary.textContent = `${list.nodes.length} compute nodes known · ${Math.round((total - free) * 100) / 100} of ${total} CPU in use · ${running} running${more}`;
    patch(place, list.nodes.slice(0, SHOWN).map((n) => card(n, list.reputation[n.peer_id], false)),
      list.nodes.length ? null : h('p', { class: 'empty' }, 'no compute node known yet'));
  });
}

export function nodePage(view, params, peer) {
  view.append(h('p', { class: 'crumbs' }, h('a', { href: '#/nodes' }, 'Nodes'), ' / ', short(peer)));
  return poll(view, (place, list) => {
    const info = list.nodes.find((n) => n.peer_id === peer);
    patch(place, info ? card(info, list.reputation[peer], true)
      : h('p', { class: 'empty' }, `this node knows no compute node ${peer}`));
  });
}
