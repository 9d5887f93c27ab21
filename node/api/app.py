"""The node's REST API (FastAPI on hypercorn-trio, in the node process).

Every route except health, readiness, version and metrics requires a signed request, checked
by the ``Signed`` middleware (``node.api.middleware``) before anything else reads the request; a job
is visible only to the client that submitted it. Errors leave here as
``{"error": {"code", "message", "fields"}}`` (``jobs.views.ErrorResponse``) from one mapping
(``node.api.errors``), and the OpenAPI schema documents each of them, the signature headers (as
four API-key security schemes, all required together) and the messages of the event stream.

Nothing a client sends may yield a 5xx: every input is bounded by its declared type (so
SQLite never sees an integer it cannot store), and an unexpected exception is logged with its
traceback and answered with a JSON 500 rather than dropping the connection.

Layers: the daemon builds a ``node.api.parts.Node`` and calls ``create_app``; this package never
imports the daemon. ``routes/`` holds one router per group, ``middleware`` what runs before them,
``errors`` the one exception → response mapping, ``metrics`` the ``/metrics`` text.
"""

import logging
import time
from pathlib import Path

import trio
from fastapi import FastAPI

from node.api.access import AuthorizedKeys
from node.api.auth import Nonces, RequestVerifier, node_authorities
from node.api.errors import install_error_handlers
from node.api.middleware import Admitted, BodyLimit, Signed
from node.api.parts import Node
from node.api.quotas import QuotaLimits, Quotas
from node.api.routes.health import health_router
from node.api.routes.jobs import jobs_router
from node.api.routes.nodes import nodes_router
from node.api.routes.sweeps import sweeps_router
from node.api.schema import install_schema
from node.config import VERSION

log = logging.getLogger("shoal.api")
SEND_TIMEOUT = 30.0  # a connection whose client reads none of a response for this long is closed
SEND_SLICE = 256 * 1024  # a response is sent in slices of this size, each under SEND_TIMEOUT
KEEP_ALIVE_TIMEOUT = 5.0  # an idle connection, or one still sending its headers, is closed after this


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="Shoal node API", version=VERSION,
                  description="Submit and follow jobs on a Shoal node. Every route except health, readiness, "
                              "version and metrics takes a signed request (see the security schemes).")
    config = node.config
    quotas = Quotas(QuotaLimits(jobs_in_flight=config.quota_jobs_in_flight,
                                spec_bytes_in_flight=config.quota_spec_bytes_in_flight,
                                submits_per_second=config.quota_submits_per_second,
                                submit_burst=max(1, round(2 * config.quota_submits_per_second)),
                                event_streams=config.quota_event_streams,
                                context_bytes_per_hour=config.quota_context_bytes_per_hour,
                                sweep_indexes_per_hour=config.quota_sweep_indexes_per_hour))
    # Hosts are set once the API listens (its port may be chosen then): until then nothing passes.
    verifier = RequestVerifier(nonces=Nonces(node.store), hosts=())
    app.state.verifier, app.state.quotas, app.state.api_names = verifier, quotas, config.api_names

    install_error_handlers(app)
    app.include_router(health_router(node, verifier, quotas, started=time.time()))
    app.include_router(jobs_router(node, quotas))
    app.include_router(nodes_router(node))
    app.include_router(sweeps_router(node, quotas))
    install_schema(app)
    access = None
    if config.authorized_keys is not None:
        access = AuthorizedKeys(config.authorized_keys)
        access.load()
    app.add_middleware(Signed, verifier=verifier, access=access)
    # added after Signed: runs before it, so the verifier reads a bounded body
    app.add_middleware(BodyLimit, admitted_room=access is not None)
    if access is not None:
        app.add_middleware(Admitted, verifier=verifier, access=access)  # first of all: see its docstring
    return app


async def serve_api(app: FastAPI, host: str, port: int, *, tls: tuple[Path, Path] | None = None,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port``; with ``tls`` (certificate, key: PEM files) over HTTPS only."""
    from functools import partial

    import hypercorn.trio.run
    from hypercorn.config import Config
    from hypercorn.trio import serve

    hypercorn.trio.run.TCPServer = _guarded_tcp_server()  # what serve() starts for each connection
    config = Config()
    config.bind = [f"{host}:{port}"]
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    config.accesslog = None
    config.errorlog = None
    # Headers must arrive within keep_alive_timeout of connecting (hypercorn's idle timer runs until a
    # request's headers are parsed), bodies within BODY_TIMEOUT (middleware.BodyLimit). hypercorn's
    # read_timeout stays off: it would also cut event streams and long polls, during which clients send nothing.
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    verifier: RequestVerifier | None = getattr(app.state, "verifier", None)
    async with trio.open_nursery() as nursery:
        if verifier is not None:
            await nursery.start(verifier.nonces.run)  # nonces from before a restart count before anything is served
        urls = await nursery.start(partial(serve, app, config))
        if verifier is not None:
            bound_port = int(urls[0].rsplit(":", 1)[1])
            verifier.hosts = node_authorities(host, bound_port, app.state.api_names, _local_addresses())
        task_status.started(urls)


def _guarded_tcp_server() -> type:
    """hypercorn's per-connection server, whose failure ends its connection and never the API.

    hypercorn lets an exception out of a connection's task into the server's nursery, and so out of the
    node: a client that hung up mid-body while the node was sending its 408 made hypercorn send an error
    response at the same time ("another task is currently sending data"), and the node exited. 600
    connections of strangers did it every time.
    """
    from hypercorn.events import RawData
    from hypercorn.trio.tcp_server import TCPServer

    class GuardedTCPServer(TCPServer):
        sending_since: float | None = None

        async def run(self) -> None:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drop_if_unread)
                    await super().run()
                    nursery.cancel_scope.cancel()
            except Exception as e:  # Cancelled is not an Exception: shutting down still ends it
                log.debug("an API connection failed: %r", e)

        async def protocol_send(self, event: object) -> None:
            if not isinstance(event, RawData):
                return await super().protocol_send(event)
            data = event.data
            # In slices, each its own shielded send (only closing the stream ends one), each timed from its
            # start: a client that reads slowly but reads is never cut off.
            slices = iter([event]) if len(data) <= SEND_SLICE else (  # copied one at a time
                RawData(data=bytes(memoryview(data)[start:start + SEND_SLICE]))
                for start in range(0, len(data), SEND_SLICE))
            try:
                for index, piece in enumerate(slices):
                    if index and _closed(self.stream):
                        return
                    self.sending_since = trio.current_time()
                    await super().protocol_send(piece)
            finally:
                self.sending_since = None

        async def _drop_if_unread(self) -> None:
            """Close the connection when one slice of a response has waited SEND_TIMEOUT for its client to
            read: 8 unread lists of big specs held 1 GB for as long as their client kept the connections."""
            while True:
                await trio.sleep(SEND_TIMEOUT / 4)
                if self.sending_since is not None and trio.current_time() - self.sending_since > SEND_TIMEOUT:
                    log.info("dropped an API connection whose client read nothing for %g s", SEND_TIMEOUT)
                    await trio.aclose_forcefully(self.stream)
                    return

    return GuardedTCPServer


def _closed(stream: trio.abc.Stream) -> bool:
    transport = getattr(stream, "transport_stream", stream)  # under TLS, the socket's stream
    return transport.socket.fileno() < 0


def _local_addresses() -> list[str]:
    """This machine's interface addresses (a node listening on all of them answers to each)."""
    import socket

    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)]
