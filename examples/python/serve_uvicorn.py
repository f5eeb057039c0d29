# Launcher that runs an ASGI app with uvicorn as a supervisor worker: it serves the inherited sockets, reports READY=1, and drains on SIGTERM without failing a request.
"""Usage: serve_uvicorn.py MODULE:APP [--http auto|h11|httptools] [--access-log] [--log-level info]

Why not `uvicorn --fd 3`: uvicorn never reports readiness; `--fd` wraps the socket as AF_UNIX, so
asyncio does not set TCP_NODELAY on accepted connections (about 43 ms per sequential keep-alive
request, uvicorn #295); and its SIGTERM shutdown closes idle and just-accepted keep-alive
connections at once, so a client that is sending its next request at that moment gets a reset.

What this launcher does instead (the drain of crates/worker/src/serve.rs):
- takes fd 3.. (systemd's LISTEN_FDS protocol) as socket.socket(fileno=fd), which keeps the real
  family (AF_INET/AF_INET6/AF_UNIX), so asyncio sets TCP_NODELAY on every TCP connection;
- sends READY=1 to NOTIFY_SOCKET (or a newline to READY_FD) once lifespan startup is complete and
  the sockets are served, so a reload into an app that fails to start is aborted;
- on SIGTERM (or SIGINT): stops accepting at once and closes its copies of the listening sockets
  (the supervisor and the other workers keep the shared socket: new connections queue for them),
  without dropping a connection it had just accepted (see begin_drain); every response from then
  on carries `Connection: close` (an ASGI middleware adds it, and uvicorn then closes the connection
  after the response); an idle keep-alive connection is closed only after DRAIN_IDLE_GRACE_MS
  (default 1000) without a request, counted from the drain's start or its last activity; it exits 0
  when the last connection is gone, or at SUPERVISOR_KILL_TIMEOUT_MS - 500 ms at the latest.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time

import uvicorn
from uvicorn.importer import import_from_string

logger = logging.getLogger("uvicorn.error")


def env_ms(name, default):
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def inherited_sockets():
    """The listening sockets passed as fd 3.. (LISTEN_FDS), or exit if there are none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("serve_uvicorn: no inherited sockets (LISTEN_PID is not this process): run me as a supervisor worker")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        sys.exit("serve_uvicorn: LISTEN_FDS is 0: give the supervisor a [[listen]] entry")
    sockets = []
    for fd in range(3, 3 + count):
        # fileno= without family/type: Python asks the kernel, so a TCP socket stays AF_INET(6).
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets.append(sock)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)  # not for our children
    return sockets


def notify(state):
    """sd_notify: one datagram to NOTIFY_SOCKET; READY=1 also works through an s6 READY_FD."""
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        if path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), path)
        except OSError as e:
            logger.warning("sd_notify %r failed: %s", state, e)
    elif state.startswith("READY=1") and os.environ.get("READY_FD"):
        fd = int(os.environ.pop("READY_FD"))
        os.write(fd, b"\n")
        os.close(fd)


class ConnectionCloseWhileDraining:
    """ASGI middleware: once the server drains, every HTTP/1 response says `Connection: close`.

    uvicorn honours the header (h11 moves to MUST_CLOSE, httptools clears keep_alive) and closes
    the connection right after the response, so a keep-alive client gets its answer and then
    reconnects, to a live worker.
    """

    def __init__(self, app):
        self.app = app
        self.server = None  # the SupervisedServer, set once it exists

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("http_version") not in ("1.0", "1.1"):
            return await self.app(scope, receive, send)

        async def send_closing(message):
            # Decided when the response starts, not when the request came in.
            if message["type"] == "http.response.start" and self.server.draining_since is not None:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_closing)


def activity_tracking(protocol_class):
    """The HTTP protocol class, recording when each connection last saw activity (for the idle grace)."""

    class Tracked(protocol_class):
        last_active = 0.0

        def connection_made(self, transport):
            self.last_active = time.monotonic()
            super().connection_made(transport)

        def data_received(self, data):
            self.last_active = time.monotonic()
            super().data_received(data)

        def on_response_complete(self):
            self.last_active = time.monotonic()
            super().on_response_complete()

    Tracked.__name__ = Tracked.__qualname__ = "Tracked" + protocol_class.__name__
    return Tracked


class SupervisedServer(uvicorn.Server):
    """uvicorn.Server with the supervisor's readiness and drain."""

    def __init__(self, config, idle_grace, deadline):
        super().__init__(config)
        self.idle_grace = idle_grace
        self.deadline = deadline
        self.draining_since = None

    # uvicorn's own capture_signals sets a flag that its main loop polls every 0.1 s, then
    # re-raises the signal after shutdown (so the process dies by SIGTERM, not exit 0). Ours
    # starts the drain inside the signal callback and lets the process exit normally.
    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def on_signal(self, sig):
        if self.draining_since is not None:
            if sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting
            return
        self.should_exit = True
        self.begin_drain()

    def begin_drain(self):
        """Stops accepting at once. Idempotent.

        Only the accept callbacks are removed here; the sockets are closed (Server.close) 50 ms
        later, in shutdown(). asyncio creates the transport of an accepted connection one loop
        iteration after accept(), and refuses to when its Server was closed in between
        (`assert self._sockets is not None` in Server._attach, swallowed): the accepted connection
        is then dropped without an answer. Our copy of the shared socket staying open for those
        50 ms costs nothing: the kernel hands queued connections to whoever accepts.
        """
        loop = asyncio.get_running_loop()
        if self.draining_since is None:
            self.draining_since = time.monotonic()
            notify("STOPPING=1")
            logger.info("draining: stopped accepting, %d connection(s) open", len(self.server_state.connections))
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if self.draining_since is not None:
            self.begin_drain()  # SIGTERM arrived during startup: stop accepting on what it opened
        elif self.started:
            notify("READY=1\nSTATUS=uvicorn serving")

    async def shutdown(self, sockets=None):
        self.begin_drain()
        started = time.monotonic()
        # Connections accepted just before the drain get their transports (and reach
        # connection_made) within a couple of loop iterations; then close our listening sockets.
        await asyncio.sleep(0.05)
        for server in getattr(self, "servers", []):
            server.close()
        state = self.server_state
        while not self.force_exit:
            now = time.monotonic()
            if not state.connections and not state.tasks:
                break
            if now - self.draining_since >= self.deadline:
                break
            for conn in list(state.connections):
                cycle = getattr(conn, "cycle", None)
                if cycle is not None and not cycle.response_complete:
                    continue  # a request in flight: its response will carry Connection: close
                transport = getattr(conn, "transport", None)
                if transport is None or transport.is_closing():
                    continue
                idle_since = max(self.draining_since, getattr(conn, "last_active", 0.0))
                if now - idle_since >= self.idle_grace:
                    conn.shutdown()  # idle: uvicorn closes it
            await asyncio.sleep(0.02)
        left = len(state.connections)
        if left or state.tasks:
            logger.warning("drain deadline: dropping %d connection(s), %d task(s)", left, len(state.tasks))
            for conn in list(state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            for task in list(state.tasks):
                task.cancel()
        logger.info("drained in %.0f ms", (time.monotonic() - started) * 1000)
        if not self.force_exit:
            await self.lifespan.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="MODULE:ATTRIBUTE of the ASGI app, imported from the working directory")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--timeout-keep-alive", type=int, default=5, help="idle keep-alive timeout, seconds")
    parser.add_argument(
        "--backlog",
        type=int,
        default=1024,
        help="asyncio calls listen() again on the shared socket with this; keep it equal to the supervisor's [[listen]] backlog",
    )
    args = parser.parse_args()

    sockets = inherited_sockets()
    sys.path.insert(0, os.getcwd())
    app = import_from_string(args.app)  # an import error exits non-zero before READY=1

    kill_ms = env_ms("SUPERVISOR_KILL_TIMEOUT_MS", 30_000)
    deadline = max(kill_ms - 500, 100) / 1000
    idle_grace = min(env_ms("DRAIN_IDLE_GRACE_MS", 1000) / 1000, deadline)

    protocols = {
        "auto": "uvicorn.protocols.http.auto:AutoHTTPProtocol",
        "h11": "uvicorn.protocols.http.h11_impl:H11Protocol",
        "httptools": "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
    }
    protocol = activity_tracking(import_from_string(protocols[args.http]))

    middleware = ConnectionCloseWhileDraining(app)
    config = uvicorn.Config(
        middleware,
        http=protocol,
        lifespan="auto",
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_keep_alive=args.timeout_keep_alive,
        backlog=args.backlog,
    )
    server = SupervisedServer(config, idle_grace=idle_grace, deadline=deadline)
    middleware.server = server
    server.run(sockets=sockets)
    sys.exit(0)


if __name__ == "__main__":
    main()
