"""``shoal ui`` in a real browser (Debian's Chromium driven by Playwright) against a real 3-node devstack.

The dashboard runs as ``shoal ui --port 0`` beside ``shoal devstack``, and finds the stack the way
every command does (its state file under ``SHOAL_HOME``). Screenshots of each page go to
``tests/output/ui/`` (printed; gitignored), to be looked at. Skipped, saying why, only when Chromium
or Playwright is missing; ``scripts/setup`` installs both.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shoal import Client
from shoal._auth import ClientKey
from tests.integration.rogue import DEVSTACK_SPAN, free_base_port
from tests.integration.test_cli_devstack import SHOAL, Stack, _assert_no_traceback, _read_until, cli_devstack

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "output" / "ui"
EVIL = "http://evil.example"


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return "Chromium is not installed (scripts/setup installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    return None


@dataclass
class Dashboard:
    url: str  # http://127.a.b.c:PORT/
    key: str  # what the printed address carries (#key=…), without which the API refuses the page
    spare_port: int  # free for a test's own server: in the stack's span, as the dashboard's port is
    stack: Stack
    client: Client


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    if (why := _browser_missing()) is not None:
        pytest.skip(why)
    home = tmp_path_factory.mktemp("ui-home")
    base = free_base_port(3)
    with cli_devstack(home, nodes=3, base_port=base) as stack:
        # ports of the stack's span, above Kubo's: the nodes' ports are free there, and so are these
        ui = subprocess.Popen([SHOAL, "ui", "--port", str(base + DEVSTACK_SPAN - 1)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=stack.env, start_new_session=True)
        try:
            banner = _read_until(ui, "Ctrl-C stops it", timeout=30)
            url, session = re.search(r"(http://127\.\d+\.\d+\.\d+:\d+/)#key=(\S+) ", banner).groups()
            key = ClientKey.load(home / "client.key")
            with Client(stack.nodes[0]["api"], key=key) as client:
                yield Dashboard(url, session, base + DEVSTACK_SPAN - 2, stack, client)
        finally:
            ui.send_signal(signal.SIGINT)
            _, err = ui.communicate(timeout=20)
            _assert_no_traceback(err)
            assert ui.returncode == 0, err


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, dashboard: Dashboard):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{dashboard.url}#key={dashboard.key}")  # the printed address: the page keeps its key
    page.wait_for_url(dashboard.url)  # the key leaves the address bar
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    _cancel_what_is_left(dashboard.client)
    assert errors == [], errors  # no script error on any page


def _cancel_what_is_left(client: Client) -> None:
    """Each test starts on idle nodes: one that failed half-way leaves no job holding the capacity that a
    later one reads off a node's page."""
    for sweep in client.list_sweeps(limit=1000).sweeps:
        if not sweep.state.is_terminal:
            client.cancel_sweep(sweep.id)
    for state in ("pending", "running"):
        for job in client.list(state=state, limit=1000).jobs:
            client.cancel(job.id)


def shot(page, name: str) -> None:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def noop(delay: float = 0.0) -> dict:
    return {"engine": {"name": "noop", "delay": delay}}


def test_the_jobs_page_shows_a_new_job_and_its_state_turning_completed_without_a_reload(page, dashboard) -> None:
    page.goto(dashboard.url + "#/jobs")
    page.wait_for_selector("#view[data-loaded-ms]", state="attached")
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    job = dashboard.client.submit(noop(delay=3), cache=False).job
    row = page.locator(f'#jobs-body tr[data-id="{job.id}"]')
    row.wait_for(timeout=15_000)  # a job submitted after the page was shown appears on it
    assert row.locator(".badge").inner_text() in ("pending", "running")
    shot(page, "jobs-running")
    row.locator('.badge[data-state="completed"]').wait_for(timeout=30_000)
    assert page.evaluate("window.loadedOnce") is True
    assert row.locator("td").nth(2).inner_text() == "noop"
    shot(page, "jobs")


def test_a_jobs_page_shows_its_executions_events_and_results(page, dashboard) -> None:
    job = dashboard.client.run(noop(), timeout=60).job
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    page.locator('#job-timeline li[data-kind="Completed"]').wait_for(timeout=15_000)
    assert page.locator("#job-exit").inner_text() == "0"
    assert page.locator("#job-executions .badge").first.inner_text() == "completed"
    assert '"noop"' in page.locator("#job-spec").inner_text()
    shot(page, "job")


def test_cancelling_from_the_page_cancels_the_job(page, dashboard) -> None:
    job = dashboard.client.submit(noop(delay=120)).job
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    page.locator("#cancel-job").click()
    page.locator('.title .badge[data-state="cancelled"]').wait_for(timeout=15_000)
    assert dashboard.client.describe(job.id).job.state == "cancelled"
    shot(page, "job-cancelled")


class HeldDescribes:
    """The page's describes of one job after its first, held until the test lets each go on."""

    def __init__(self, page, job_id: str) -> None:
        self.held: list = []
        self.seen = 0
        self.passing = False
        page.route(f"**/api/v1/jobs/{job_id}", self._route)

    def _route(self, route) -> None:
        self.seen += 1
        if self.passing or self.seen == 1:
            return route.continue_()
        self.held.append(route)

    def release(self) -> None:
        """Let every held describe go on to the node, and those to come."""
        self.passing = True
        while self.held:
            self.held.pop(0).continue_()


def _wait_until(condition, page, what: str, timeout: float = 15) -> None:
    """Poll ``condition`` through the page's own wait: Playwright runs route handlers only while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        page.wait_for_timeout(50)


def test_job_pages_in_hidden_tabs_leave_the_connections_to_the_tab_in_front(browser, dashboard) -> None:
    """A browser keeps six connections to a host, and a job's page holds two (its live events, its output):
    with three job pages in tabs, a click on Cancel in one of them sent nothing, and a fourth tab never
    rendered. A tab out of sight stops its page, and shows it afresh when it comes back."""
    jobs = [dashboard.client.submit(noop(delay=120)).job for _ in range(4)]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        tabs = []
        for job in jobs:
            tab = context.new_page()
            if not tabs:  # the printed address in the first: the tabs after it find the key it kept
                tab.goto(f"{dashboard.url}#key={dashboard.key}")
            tab.goto(f"{dashboard.url}#/jobs/{job.id}")
            tab.locator('.title .badge[data-state="running"]').wait_for(timeout=15_000)
            # the browser hides a tab another one is brought in front of
            tab.evaluate("() => { Object.defineProperty(document, 'hidden', { value: true, configurable: true });"
                         " document.dispatchEvent(new Event('visibilitychange')); }")
            tabs.append(tab)
        front = tabs[0]
        front.evaluate("() => { Object.defineProperty(document, 'hidden', { value: false, configurable: true });"
                       " document.dispatchEvent(new Event('visibilitychange')); }")
        front.locator("#cancel-job").click(timeout=15_000)
        front.locator('.title .badge[data-state="cancelled"]').wait_for(timeout=15_000)
        assert dashboard.client.describe(jobs[0].id).job.state == "cancelled"
    finally:
        context.close()
        for job in jobs:
            dashboard.client.cancel(job.id)


def test_a_click_on_cancel_is_not_lost_when_the_page_updates_under_it(page, dashboard) -> None:
    """A user's click is a mousedown and, some 100 ms later, a mouseup: the page updating between the two
    (on one of the job's events) must leave the button the user pressed in place, or no click happens."""
    job = dashboard.client.submit(noop(delay=120)).job
    describes = HeldDescribes(page, job.id)
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    button = page.locator("#cancel-job")
    button.wait_for(timeout=15_000)
    _wait_until(lambda: describes.held, page, "the page to describe the job again on its events")
    box = button.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    with page.expect_response(lambda r: r.url.endswith(f"/api/v1/jobs/{job.id}")):
        describes.held.pop(0).continue_()  # the page renders the job again, under the pressed button
    page.wait_for_timeout(300)
    describes.release()
    page.mouse.up()
    page.locator('.title .badge[data-state="cancelled"]').wait_for(timeout=15_000)
    assert dashboard.client.describe(job.id).job.state == "cancelled"


def test_an_answer_that_comes_late_does_not_put_back_an_older_state(page, dashboard) -> None:
    """The page describes the job again on each event; an answer asked for before the cancel but delivered
    after it (a slow node, a busy proxy) must not show the job running again: no later event would mend it."""
    job = dashboard.client.submit(noop(delay=120)).job
    describes = HeldDescribes(page, job.id)
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    page.locator("#cancel-job").wait_for(timeout=15_000)
    _wait_until(lambda: describes.held, page, "the page to describe the job again on its events")
    late = describes.held.pop(0)
    answer = late.fetch()  # the node's answer now: the job still running
    assert answer.json()["job"]["state"] in ("pending", "running")
    page.locator("#cancel-job").click()
    page.locator('.title .badge[data-state="cancelled"]').wait_for(timeout=15_000)
    _wait_until(lambda: describes.held, page, "the page to describe the job again on its Cancelled event")
    describes.release()  # asked for after the cancel: they answer cancelled
    with page.expect_response(lambda r: r.url.endswith(f"/api/v1/jobs/{job.id}")):
        late.fulfill(response=answer)  # and now the answer asked for before it
    page.wait_for_timeout(500)
    assert page.locator(".title .badge").get_attribute("data-state") == "cancelled"
    assert page.locator("#cancel-job").count() == 0


def test_a_sweeps_page_shows_its_grid(page, dashboard) -> None:
    sweep = dashboard.client.run_sweep({"job": noop(), "grid": {"x": [str(i) for i in range(40)]}, "confidence": 2},
                                       timeout=60).sweep
    page.goto(dashboard.url + f"#/sweeps/{sweep.id}")
    page.locator('#sweep-legend b[data-count="completed"]:text-is("40")').wait_for(timeout=15_000)
    page.get_by_text("each index verified by 2 nodes").wait_for()
    cells = page.locator("#sweep-grid rect.cell")
    assert cells.count() == 40
    assert cells.evaluate_all("cells => cells.every(c => c.dataset.state === 'completed')")
    shot(page, "sweep")
    page.goto(dashboard.url + "#/sweeps")
    page.locator(f'#sweeps-body tr[data-id="{sweep.id}"]').wait_for()
    shot(page, "sweeps")


def test_a_sweeps_grid_past_the_ranges_a_description_carries_shows_no_state(page, dashboard) -> None:
    """A description carries 1,000 ranges: a 2,000-index sweep whose odd indexes failed showed its last 1,000
    (finished) indexes as pending, and its live progress stopped there."""
    states = page.evaluate("""async () => {
        const { grid } = await import('/static/sweeps.js');
        const ranges = Array.from({ length: 1000 },
            (_, i) => ({ first: i, last: i, state: i % 2 ? 'failed' : 'completed' }));
        const count = (svg) => [...svg.querySelectorAll('rect.cell')].reduce(
            (n, c) => ({ ...n, [c.dataset.state]: (n[c.dataset.state] || 0) + 1 }), {});
        return [count(grid(2000, ranges, true)), count(grid(1000, ranges, false))];
    }""")
    assert states == [{"completed": 500, "failed": 500, "unknown": 1000}, {"completed": 500, "failed": 500}]


def test_cancelling_a_sweep_from_its_page_cancels_it(page, dashboard) -> None:
    sweep = dashboard.client.submit_sweep({"job": noop(delay=120), "grid": {"x": [str(i) for i in range(12)]}}).sweep
    page.goto(dashboard.url + f"#/sweeps/{sweep.id}")
    page.locator("#cancel-sweep").click()
    page.locator('.title .badge[data-state="cancelled"]').wait_for(timeout=15_000)
    assert dashboard.client.describe_sweep(sweep.id).sweep.state == "cancelled"
    shot(page, "sweep-cancelled")


def test_a_jobs_page_shows_what_the_job_printed(page, dashboard) -> None:
    if "python" not in dashboard.client.node().engines:
        pytest.skip("no node offers the python engine here (scripts/install-pyodide)")
    code = "import sys\nfor i in range(3): print('line', i)\nprint('careful', file=sys.stderr)"
    job = dashboard.client.run({"engine": {"name": "python", "code": code}}, timeout=120).job
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    page.locator("#job-logs:text('line 2')").wait_for(timeout=15_000)
    assert page.locator("#job-logs").inner_text() == "line 0\nline 1\nline 2\n"
    page.locator("#job-output-stream").select_option("stderr")
    page.locator("#job-logs:text('careful')").wait_for(timeout=15_000)
    assert page.locator("#job-cid").inner_text() == job.result.cid
    shot(page, "job-output")


def test_a_jobs_page_holds_the_tail_of_a_long_output(page, dashboard) -> None:
    """The page appended all it was sent: a node streaming 200 MiB froze the tab. It holds the last 256 KiB."""
    if "docker" not in dashboard.client.node().engines:
        pytest.skip("no node offers the docker engine here (scripts/install-docker)")
    script = (f"sleep 3; for b in $(seq 0 39); do for i in $(seq 0 499); do echo \"line $b-$i {'0' * 30}\"; "
              "done; sleep 0.1; done; echo last; sleep 2")  # 900 KB, over about 5 s
    job = dashboard.client.submit({"engine": {"name": "docker", "image": "busybox", "args": ["sh", "-c", script]},
                                   "cache": False}).job
    page.goto(dashboard.url + f"#/jobs/{job.id}")
    page.locator("#job-logs:text('last')").wait_for(timeout=60_000)
    text = page.locator("#job-logs").text_content()
    assert text.startswith("[earlier output not shown here: download the results for all of it]")
    assert text.endswith("line 39-499 " + "0" * 30 + "\nlast\n") and len(text) <= 600 * 1024, len(text)
    assert dashboard.client.wait(job.id, timeout=60).job.state == "completed"


def test_a_nodes_page_shows_its_capacity(page, dashboard) -> None:
    job = dashboard.client.submit({**noop(delay=60), "resources": {"cpu": 1.5}}).job
    deadline = time.monotonic() + 15
    while not (executions := dashboard.client.describe(job.id).executions) and time.monotonic() < deadline:
        time.sleep(0.2)
    peer = executions[0].node_id  # the node running it: 1.5 of its 2 CPUs in use
    page.goto(dashboard.url + f"#/nodes/{peer}")
    card = page.locator(f'article.node[data-peer="{peer}"]')
    card.wait_for(timeout=15_000)
    cpu = card.locator('.capacity[data-resource="cpu"]')
    cpu.locator('.bar[aria-valuenow="1.5"]').wait_for(timeout=15_000)  # as the node's next node info says
    assert re.fullmatch(r"0\.5 CPU free of [\d.]+ CPU", cpu.locator(".value").inner_text())
    assert "noop" in card.locator(".chip.engine").all_inner_texts()
    assert card.locator(".running").inner_text() == "1"
    shot(page, "node")
    page.goto(dashboard.url + "#/nodes")
    page.locator("article.node").nth(2).wait_for(timeout=15_000)
    shot(page, "nodes")
    page.goto(dashboard.url + "#/overview")
    page.locator("#charts svg.chart").nth(2).wait_for(timeout=15_000)
    time.sleep(4.5)  # a few samples on the charts
    shot(page, "overview")
    dashboard.client.cancel(job.id)


def test_another_user_of_the_machine_without_the_printed_address_gets_nothing(browser, dashboard) -> None:
    """127.0.0.1 is every local user's: without the address shoal ui printed, the page (which holds no secret)
    says how to get in, and nothing goes through the proxy."""
    job = dashboard.client.submit(noop(delay=120)).job
    stranger = browser.new_page()
    asked: list[str] = []
    stranger.on("request", lambda r: asked.append(r.url))
    try:
        stranger.goto(dashboard.url)
        assert "open the address it prints" in stranger.locator("#no-key").inner_text()
        assert stranger.locator('meta[name="shoal-ui-token"]').count() == 0
        assert not [url for url in asked if "/api/" in url or "/ui/live" in url]
    finally:
        stranger.close()
    for path in ("", "index.html", "?key=guess"):
        text = httpx.get(dashboard.url + path).text
        assert "shoal-ui-token" not in text and dashboard.key not in text
    assert httpx.post(dashboard.url + f"api/v1/jobs/{job.id}/cancel", headers={"Origin": dashboard.url[:-1]}
                      ).status_code == 403
    assert dashboard.client.describe(job.id).job.state != "cancelled"
    dashboard.client.cancel(job.id)


def test_a_request_from_another_origin_is_refused(page, dashboard) -> None:
    job = dashboard.client.submit(noop(delay=120)).job
    target = dashboard.url + f"api/v1/jobs/{job.id}/cancel"
    # Another site's page posts a form to the dashboard (the request a browser lets any page send).
    page.route(EVIL + "/", lambda route: route.fulfill(
        content_type="text/html",
        body=f'<form method="post" action="{target}"><button id="go">win a prize</button></form>'))
    page.goto(EVIL + "/")
    with page.expect_response(target) as answer:
        page.locator("#go").click()
    assert answer.value.status == 403
    assert "only the dashboard's own page may call it" in page.content()
    # Even knowing the page's token, another origin gets nowhere, for writes or for reads.
    page.goto(dashboard.url)
    token = page.evaluate("localStorage.getItem('shoal-ui-key')")
    assert token == dashboard.key
    headers = {"X-Shoal-UI-Token": token, "Origin": EVIL}
    assert httpx.post(target, headers=headers).status_code == 403
    assert httpx.get(dashboard.url + "api/v1/jobs", headers=headers).status_code == 403
    assert dashboard.client.describe(job.id).job.state != "cancelled"
    dashboard.client.cancel(job.id)


def test_the_jobs_page_pages_through_many_jobs(page, dashboard) -> None:
    """A page of 50 whatever the total; the figure of merit for 10,000 jobs is printed by SHOAL_UI_JOBS=10000."""
    many = int(os.environ.get("SHOAL_UI_JOBS", "120"))
    have = dashboard.client.list(limit=1).total
    spec = noop()
    with Client(dashboard.client.api_url, key=dashboard.client.key) as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.submit(spec, idempotency_key=None), range(max(0, many - have))))
    total = dashboard.client.list(limit=1).total
    started = time.perf_counter()
    page.goto(dashboard.url + "#/jobs")
    page.locator("#jobs-body tr").nth(49).wait_for(timeout=15_000)
    usable = time.perf_counter() - started
    print(f"\njobs page with {total} jobs in the store: first 50 rows shown {usable * 1000:.0f} ms after "
          f"navigation (the list call itself {page.locator('#view').get_attribute('data-loaded-ms')} ms)")
    assert page.locator("#jobs-body tr").count() == 50
    dash = "\N{EN DASH}"
    assert page.locator("#jobs-summary").inner_text() == f"1{dash}50 of {total}"
    page.get_by_role("button", name="older").click()
    page.locator(f"#jobs-summary:text-is('51{dash}100 of {total}')").wait_for(timeout=10_000)
    shot(page, "jobs-page-2")
    page.locator("#state-filter").select_option("cancelled")
    page.wait_for_function("location.hash === '#/jobs?state=cancelled'")
    page.locator("#jobs-body tr .badge").first.wait_for(timeout=10_000)
    assert set(page.locator("#jobs-body tr .badge").all_inner_texts()) == {"cancelled"}


def test_the_jobs_page_filters_by_the_label_a_job_asked_for(page, dashboard) -> None:
    eu = dashboard.client.submit({**noop(delay=120), "selector": "zone=eu"}).job  # no node has it: failed, listed
    other = dashboard.client.submit({**noop(delay=120), "selector": "zone=us"}).job
    later = None
    try:
        page.goto(dashboard.url + "#/jobs")
        page.locator("#label-filter").fill("zone=eu")
        page.locator("#label-filter").press("Enter")
        page.wait_for_function("location.hash === '#/jobs?selector=zone%3Deu'")
        page.locator(f'#jobs-body tr[data-id="{eu.id}"]').wait_for(timeout=10_000)
        assert page.locator("#jobs-body tr").count() == 1 and page.locator(f'tr[data-id="{other.id}"]').count() == 0
        assert dashboard.client.list(selector="zone=us").jobs[0].id == other.id  # the SDK and API filter alike
        shot(page, "jobs-label")
        page.evaluate("window.loadedOnce = true")  # gone if the page reloads
        later = dashboard.client.submit({**noop(delay=120), "selector": "zone=eu"}).job
        page.locator(f'#jobs-body tr[data-id="{later.id}"]').wait_for(timeout=15_000)  # live, as filtered
        assert page.locator("#jobs-body tr").count() == 2 and page.evaluate("window.loadedOnce") is True
    finally:
        for job in (eu, other, later):
            if job is not None:
                dashboard.client.cancel(job.id)


def test_another_local_server_the_tab_then_visits_gets_no_key(page, dashboard) -> None:
    """A browser sends a cookie of 127.0.0.1 to every port of 127.0.0.1: the session cookie (the key itself) went to
    any other local server the tab visited (another user's, or one a web page sent the tab to), which then acted
    with the user's key. The key is in no cookie now, and a call without it gets nothing."""
    seen: list[dict[str, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, **dict(self.headers)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"another server")

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.HTTPServer(("127.0.0.1", dashboard.spare_port), Recorder)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page.goto(dashboard.url + "#/jobs")
        page.wait_for_selector("#view[data-loaded-ms]", state="attached")  # its calls and live stream made
        page.evaluate(f"location.href = 'http://127.0.0.1:{dashboard.spare_port}/anything'")  # the page sends it
        page.get_by_text("another server").wait_for()
    finally:
        other.shutdown()
        other.server_close()
    assert seen and all(dashboard.key not in str(request) for request in seen)
    assert all("Cookie" not in request and dashboard.url not in request.get("Referer", "") for request in seen), seen
    assert page.context.cookies() == []
    job = dashboard.client.submit(noop(delay=120)).job
    old_cookie = {"Cookie": f"shoal-ui-{dashboard.url.rsplit(':', 1)[1][:-1]}={dashboard.key}"}
    for headers in (old_cookie, {}, {"Origin": dashboard.url[:-1]}):
        assert httpx.get(dashboard.url + "api/v1/jobs?limit=1", headers=headers).status_code == 403
        cancel = httpx.post(dashboard.url + f"api/v1/jobs/{job.id}/cancel",
                            headers={**headers, "Origin": dashboard.url[:-1]})
        assert cancel.status_code == 403
    assert dashboard.client.describe(job.id).job.state != "cancelled"
    dashboard.client.cancel(job.id)


# Counts the page's live streams: window.streams, each with its readyState (2: closed).
COUNT_STREAMS = """(() => { const Native = window.EventSource; window.streams = [];
  window.EventSource = function (url) { const s = new Native(url); window.streams.push(s); return s; };
  window.EventSource.prototype = Native.prototype; })();"""


@pytest.mark.parametrize("what", ["jobs", "sweeps"])
def test_leaving_a_list_while_it_loads_leaves_no_stream_open(page, dashboard, what) -> None:
    """Leaving Jobs or Sweeps before its list came (or with a reload on a new job due) opened a live stream that
    nothing closed: six of them took every connection a browser keeps to a host, and each page stayed loading."""
    page.add_init_script(COUNT_STREAMS)
    page.goto(dashboard.url + "#/overview")
    page.reload()
    held: list = []
    page.route(lambda url: f"/api/v1/{what}?" in url, lambda route: held.append(route))
    page.evaluate(f"location.hash = '#/{what}'")
    _wait_until(lambda: held, page, f"the {what} page to ask for its list")
    page.evaluate("location.hash = '#/overview'")  # left before the answer
    with page.expect_response(lambda r: f"/api/v1/{what}?" in r.url):
        held.pop().continue_()
    page.wait_for_timeout(500)
    assert page.evaluate("window.streams.filter((s) => s.readyState !== 2).length") == 0
    page.unroute_all()
    page.evaluate(f"location.hash = '#/{what}'")
    _wait_until(lambda: page.evaluate("window.streams.some((s) => s.readyState === 1)"), page, "the list's stream")
    # a new job or sweep (the stream's list event): the page reloads its list a moment later; it is left before
    page.evaluate("() => { window.streams.at(-1).dispatchEvent(new MessageEvent('list', { data: '{}' }));"
                  " location.hash = '#/overview'; }")
    page.wait_for_timeout(1000)
    assert page.evaluate("window.streams.filter((s) => s.readyState !== 2).length") == 0


def test_the_sweeps_list_keeps_its_stream_while_a_listed_sweep_runs(page, dashboard) -> None:
    """Each event reloaded the list, and each reload opened the live stream anew, which replays each open sweep's
    events from its start: the page reconnected twice a second while a listed sweep ran, and the node replayed
    every history each time (2.5 s of its CPU in 20 s with 21 sweeps running)."""
    sweep = dashboard.client.submit_sweep({"job": noop(delay=120), "grid": {"x": ["1", "2", "3"]}}).sweep
    page.add_init_script(COUNT_STREAMS)
    page.goto(dashboard.url + "#/sweeps")
    page.reload()
    page.locator(f'#sweeps-body tr[data-id="{sweep.id}"] .badge[data-state="running"]').wait_for(timeout=15_000)
    page.wait_for_timeout(4000)
    assert page.evaluate("window.streams.length") <= 2, "the list's stream was opened again and again"
    dashboard.client.cancel_sweep(sweep.id)


@pytest.mark.parametrize("what", ["jobs", "sweeps"])
def test_a_list_page_past_the_end_says_so_and_links_to_the_last_page(page, dashboard, what) -> None:
    """#/jobs?offset=1000 with 39 jobs showed "1001 to 39 of 39" and "no jobs yet"."""
    dashboard.client.run(noop(), timeout=60)  # a job and a sweep at least
    dashboard.client.run_sweep({"job": noop(), "grid": {"x": ["1"]}}, timeout=60)
    total = (dashboard.client.list if what == "jobs" else dashboard.client.list_sweeps)(limit=1).total
    page.goto(dashboard.url + f"#/{what}?offset={(total // 50 + 20) * 50}")
    link = page.locator(f"#{what}-body #last-page")
    link.wait_for(timeout=15_000)
    assert page.locator(f"#{what}-body").inner_text().startswith(f"this page is past the end ({total} ")
    assert page.locator(".toolbar .summary").inner_text() == ""
    link.click()
    dash = "\N{EN DASH}"
    page.locator(f".toolbar .summary:text-is('{(total - 1) // 50 * 50 + 1}{dash}{total} of {total}')").wait_for(
        timeout=10_000)
    assert page.locator(f"#{what}-body tr[data-id]").count() == total - (total - 1) // 50 * 50


def test_a_key_another_page_hands_in_replaces_no_working_one_and_the_printed_one_works_in_an_open_tab(
        browser, dashboard) -> None:
    """Any site may open the dashboard's address with a key of its own: a junk one, stored over the real one,
    locked the user out of every tab. And the printed address opened in a tab already showing the dashboard
    changes only the fragment, which reloads nothing: the page never took the key."""
    context = browser.new_context()  # nothing stored yet
    page = context.new_page()
    stored = "localStorage.getItem('shoal-ui-key')"
    try:
        page.goto(dashboard.url)
        page.locator("#no-key").wait_for(timeout=15_000)
        with page.expect_event("load", timeout=15_000):  # the page takes the key, then loads anew with it
            page.evaluate(f"location.hash = '#key={dashboard.key}'")  # the printed address, in this tab
        page.locator("#node a").wait_for(timeout=15_000)  # the dashboard, talking to its node
        assert page.evaluate(stored) == dashboard.key and page.url == dashboard.url
        with page.expect_event("load", timeout=15_000):
            page.evaluate("location.hash = '#key=junk'")  # another site opening the address with its own key
        page.locator("#node a").wait_for(timeout=15_000)
        assert page.evaluate(stored) == dashboard.key
        other = context.new_page()  # the same, in a tab of its own
        other.goto(dashboard.url + "#key=junk")
        other.wait_for_url(dashboard.url)
        other.wait_for_timeout(1000)  # its answer from the proxy has come
        other.close()
        page.reload()
        page.locator("#node a").wait_for(timeout=15_000)
        assert page.evaluate(stored) == dashboard.key
        status = page.evaluate("fetch('/api/v1/node', {headers: {'X-Shoal-UI-Token': "
                               "localStorage.getItem('shoal-ui-key')}}).then(r => r.status)")
        assert status == 200
    finally:
        context.close()


def test_a_crowd_of_node_identities_is_shown_in_part(browser, tmp_path: Path) -> None:
    """Any peer can gossip node info under as many identities as it likes, and a requester keeps 4,096: the Nodes
    page drew a card for each of them every 3 s (a 12.6 MB list; the tab froze up to 9 s at a time). It draws the
    200 known longest (the first in the requester's list)."""
    info = {"kind": "node_info", "addrs": ["/ip4/192.0.2.1/tcp/4001"], "engines": ["noop"], "labels": {"zone": "x"},
            "max_per_job": {"cpu": 1, "memory": 2**30, "disk": 0}, "total": {"cpu": 4, "memory": 2**33, "disk": 0},
            "free": {"cpu": 2, "memory": 2**32, "disk": 0}, "running": 1, "backlog": 0, "network": False}
    body = json.dumps({"nodes": [{**info, "peer_id": f"12D3KooW{i:044d}"} for i in range(4096)],
                       "reputation": {}}).encode()

    class CrowdedNode(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == "/v1/nodes"
            answer = body if found else b'{"error": {"code": "not_found", "message": "not here"}}'
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    node = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CrowdedNode)
    threading.Thread(target=node.serve_forever, daemon=True).start()
    env = {**os.environ, "SHOAL_HOME": str(tmp_path), "SHOAL_API": f"http://127.0.0.1:{node.server_address[1]}"}
    ui = subprocess.Popen([SHOAL, "ui"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        url = re.search(r"(http://\S+) ", _read_until(ui, "Ctrl-C stops it", timeout=30)).group(1)
        page.goto(url)
        page.evaluate("location.hash = '#/nodes'")
        page.locator("#nodes-summary", has_text="4096 compute nodes known").wait_for(timeout=60_000)
        assert page.locator("article.node").count() == 200
        assert "the 200 known longest shown" in page.locator("#nodes-summary").inner_text()
    finally:
        page.close()
        ui.send_signal(signal.SIGINT)
        _, err = ui.communicate(timeout=20)
        node.shutdown()
        node.server_close()
    _assert_no_traceback(err)
