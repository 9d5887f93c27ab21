// Building the page: elements from data (text only, never HTML), and how values are shown.

/** h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child, …) */
export function h(tag, attrs = {}, ...children) {
  const svg = ['svg', 'rect', 'path', 'line', 'text', 'g', 'polyline', 'title', 'circle'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) on(el, key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** el's handler of `type` events: one listener per type, calling el's current handler (which `patch` may
 *  replace with the one of the element built afresh, whose data it closes over). */
function on(el, type, handler) {
  el.handlers ??= {};
  if (!(type in el.handlers)) el.addEventListener(type, (event) => el.handlers[type]?.(event));
  el.handlers[type] = handler;
}

export const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
export const STATES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

export function badge(state) {
  return h('span', { class: `badge ${state}`, dataset: { state } }, state);
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return '';
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : '';
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '';
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(seconds < 10 ? 2 : 0)} s`;
}

export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function short(id) {
  return id && id.length > 14 ? `${id.slice(0, 10)}…${id.slice(-4)}` : id || '';
}

export function errorBox(error) {
  return h('div', { class: 'error', role: 'alert' }, error.message || String(error));
}

/** Calls fn(key) once per key at most every `ms`, coalescing the calls in between; .cancel() drops those due. */
export function coalesce(fn, ms = 150) {
  const pending = new Map();
  const call = (key) => {
    if (pending.has(key)) return;
    pending.set(key, setTimeout(() => { pending.delete(key); fn(key); }, ms));
  };
  call.cancel = () => {
    for (const timer of pending.values()) clearTimeout(timer);
    pending.clear();
  };
  return call;
}

/** el.replaceChildren(...) leaving out null, undefined and false (a part a page may not have). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/**
 * Make el's children look like `children` (built afresh with h()) while keeping the elements already
 * there: an element with the key (id, data-id or data-peer) of one already in el, or else of the same
 * tag in the same place, is updated in place (attributes, handlers, children) instead of replaced;
 * elements whose keys are gone are removed first, so those after them stay where they are. A page that
 * re-renders as events come in thus keeps the button under the user's pointer: a click whose mousedown
 * and mouseup land on two different elements is no click at all. A child given that is already in el
 * is kept as it is.
 */
export function patch(el, ...children) {
  const next = children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
  const wanted = new Set(next.map(keyOf).filter(Boolean));
  const keyed = new Map();
  for (const child of [...el.childNodes]) {
    const key = keyOf(child);
    if (key && !wanted.has(key)) child.remove();
    else if (key) keyed.set(key, child);
  }
  next.forEach((node, i) => {
    const at = el.childNodes[i];
    const key = keyOf(node);
    let keep = node.parentNode === el ? node : key ? keyed.get(key) : at && !keyOf(at) ? at : undefined;
    if (keep !== undefined && keep !== node && !alike(keep, node)) keep = undefined;
    if (keep !== undefined && keep !== node) update(keep, node);
    const put = keep ?? node;
    if (at !== put) el.insertBefore(put, at ?? null);
  });
  while (el.childNodes.length > next.length) el.lastChild.remove();
  return el;
}

const keyOf = (node) => (node.nodeType === Node.ELEMENT_NODE
  ? node.id || node.getAttribute('data-id') || node.getAttribute('data-peer') || '' : '');

function alike(old, node) {
  return old.nodeType === node.nodeType && old.nodeName === node.nodeName && keyOf(old) === keyOf(node);
}

function update(old, node) {
  if (node.nodeType !== Node.ELEMENT_NODE) {
    if (old.nodeValue !== node.nodeValue) old.nodeValue = node.nodeValue;
    return;
  }
  for (const { name } of [...old.attributes]) if (!node.hasAttribute(name)) old.removeAttribute(name);
  for (const { name, value } of [...node.attributes]) if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  for (const [type, handler] of Object.entries(node.handlers || {})) on(old, type, handler);
  for (const type of Object.keys(old.handlers || {})) if (!node.handlers?.[type]) old.handlers[type] = undefined;
  patch(old, ...node.childNodes);
}
