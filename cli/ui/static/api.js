// Calls to the node through the dashboard's proxy, which signs them; the page carries only its
// per-session key, never a client key.

// The address shoal ui prints carries the session's key in its fragment (#key=…), which no server is sent.
// It is kept in this origin's localStorage, not sessionStorage: a link opened in a new tab (a job, a sweep)
// starts with no sessionStorage in Chromium, and the key is worthless once that shoal ui stops. Never in a
// cookie: the browser would send it to every port of 127.0.0.1. It leaves the address bar (and the history).
const KEY = 'shoal-ui-key';

// A key handed in replaces a stored one only once the proxy takes it: any site may open this address with a key
// of its own, and a junk one stored over the real one locked the user out of every tab. With none stored there is
// nothing to lose, and it is kept at once: a reload right after must not find it gone.
function handedIn() {
  const given = location.hash.match(/^#key=([A-Za-z0-9_-]+)$/);
  if (!given) return null;
  history.replaceState(null, '', location.pathname + location.search);
  if (!localStorage.getItem(KEY)) localStorage.setItem(KEY, given[1]);
  return given[1];
}

async function keepIfTaken(key) {
  if (key === localStorage.getItem(KEY)) return;
  try {
    const answer = await fetch('/api/v1/node', { headers: { 'X-Shoal-UI-Token': key } });
    if (answer.status !== 403) localStorage.setItem(KEY, key);
  } catch { /* the proxy is gone: nothing to keep it for */ }
}

const given = handedIn();
if (given) keepIfTaken(given);
// The printed address opened in a tab that shows the dashboard already changes only the fragment: no reload.
window.addEventListener('hashchange', async () => {
  const key = handedIn();
  if (key) {
    await keepIfTaken(key);
    location.reload();
  }
});
export const token = given || localStorage.getItem(KEY) || '';  // this page uses what it was handed

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function check(response) {
  if (response.ok) return response;
  let message = response.statusText || `HTTP ${response.status}`;
  let code = '';
  try {
    const body = await response.json();
    message = body.error?.message ?? body.detail ?? message;
    code = body.error?.code ?? '';
  } catch { /* not JSON */ }
  throw new ApiError(response.status, code, message);
}

/** fetch `/api${path}`; JSON answers are parsed, others returned as the Response. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { 'X-Shoal-UI-Token': token, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await check(await fetch(`/api${path}`, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  }));
  return (response.headers.get('content-type') || '').includes('json') ? response.json() : response;
}

/** Text as the node writes it (a log being followed): onText(chunk) for each piece. */
export async function streamText(path, onText, signal) {
  const response = await check(await fetch(`/api${path}`, { headers: { 'X-Shoal-UI-Token': token }, signal }));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(value);
  }
}

/** A file the node serves (results): fetched with the token, then saved by the browser. */
export async function download(path, filename) {
  const response = await check(await fetch(`/api${path}`, { headers: { 'X-Shoal-UI-Token': token } }));
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement('a'), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * The node's event streams of `ids` (jobs `j-…`, sweeps `s-…`) merged by the proxy into one
 * EventSource; `watch` ({what: 'jobs' or 'sweeps', total, newest}: the list's head as the page shows it)
 * also says when the list has new work; with `state` or `selector` in it, the list as filtered so.
 * handlers: {event(id, event), end(id, state), gone(id, message), list()}. Returns close().
 */
export function live(ids, watch, handlers) {
  const [what, seen] = watch ? [watch.what, `${watch.total}:${watch.newest || ''}`] : ['', ''];
  const query = new URLSearchParams({ token, ids: ids.join(','), watch: what, seen });
  for (const key of ['state', 'selector']) if (watch?.[key]) query.set(key, watch[key]);
  const source = new EventSource(`/ui/live?${query}`);
  const on = (name, fn) => source.addEventListener(name, (m) => fn(JSON.parse(m.data)));
  on('event', (d) => handlers.event?.(d.id, d.event));
  on('end', (d) => handlers.end?.(d.id, d.state));
  on('gone', (d) => handlers.gone?.(d.id, d.message));
  on('list', (d) => handlers.list?.(d));
  return () => source.close();
}

/**
 * Answers used in the order their questions were asked: `const inOrder = ordered();` then
 * `const answer = await inOrder(api(…))` is undefined when an answer to a later question has already
 * been shown (a page asking again on each event would otherwise put back an older state it got late).
 */
export function ordered() {
  let asked = 0;
  let shown = 0;
  return async (promise) => {
    const n = ++asked;
    let value;
    try {
      value = await promise;
    } catch (error) {
      if (n < shown) return undefined; // nor does a late failure cover what a later answer showed
      throw error;
    }
    if (n < shown) return undefined;
    shown = n;
    return value;
  };
}
