# Supervisor worker with the standard library only: ThreadingHTTPServer on the inherited sockets, READY=1 as a raw datagram, a drain that fails no request.
"""Routes: / (answers with its pid), /heavy (a few ms of CPU), /healthz.

The worker protocol by hand (README.md "Running any program as a worker"):
- the listening sockets are fd 3.. (LISTEN_FDS, LISTEN_PID = our pid); never bind;
- READY=1 is one datagram to the Unix socket in NOTIFY_SOCKET;
- with a watchdog (WATCHDOG_USEC, WATCHDOG_PID = our pid), WATCHDOG=1 at least once per period,
  sent from the accept loop itself: a stuck accept loop stops it and the supervisor replaces us;
- SIGTERM drains: stop accepting at once (close our copies of the listening sockets), answer
  every request from then on with `Connection: close`, close an idle keep-alive connection only
  after DRAIN_IDLE_GRACE_MS (default 1000) without a request, counted from the drain's start or
  its last request, exit 0 when the last connection is gone (SUPERVISOR_KILL_TIMEOUT_MS - 500 ms
  at the latest).
"""

import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pages import page


def env_ms(name, default):
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


KILL_MS = env_ms("SUPERVISOR_KILL_TIMEOUT_MS", 30_000)
DEADLINE = max(KILL_MS - 500, 100) / 1000
IDLE_GRACE = min(env_ms("DRAIN_IDLE_GRACE_MS", 1000) / 1000, DEADLINE)
KEEP_ALIVE_TIMEOUT = 60.0  # an idle keep-alive connection is closed after this in normal operation
POLL = 0.1  # how often a waiting connection looks at the drain state


class Drain:
    """Process-wide drain state and open-connection count."""

    def __init__(self):
        self.since = None  # time.monotonic() when the drain began
        self.lock = threading.Lock()
        self.open = 0
        self.all_closed = threading.Event()
        self.all_closed.set()

    def opened(self):
        with self.lock:
            self.open += 1
            self.all_closed.clear()

    def closed(self):
        with self.lock:
            self.open -= 1
            if self.open == 0:
                self.all_closed.set()


DRAIN = Drain()


def notify(state):
    """sd_notify without libsystemd: one datagram."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY on each connection
    wbufsize = -1  # buffer the response: headers and body leave in one write at the flush

    def do_GET(self):
        self.respond(*page(self.path))

    def respond(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # Decided when the response is written: during the drain (or when the client asked),
        # tell the client this connection ends here; send_header also sets close_connection.
        if DRAIN.since is not None or self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # no access log: the supervisor would log every line

    def handle(self):
        """The keep-alive loop, waiting for each next request under the drain's idle rule."""
        self.close_connection = True
        self.last_active = time.monotonic()
        while self.wait_for_request():
            self.handle_one_request()
            self.last_active = time.monotonic()
            if self.close_connection:
                break

    def request_arrived(self):
        """Whether bytes of the next request are here (buffered, or in the socket). Never blocks."""
        self.connection.setblocking(False)
        try:
            return bool(self.rfile.peek(1))  # buffered bytes without I/O, else one recv (EAGAIN: b"")
        except (BlockingIOError, InterruptedError):
            return False
        finally:
            self.connection.setblocking(True)

    def wait_for_request(self):
        """True when the next request begins; False when the connection should be closed: the
        peer closed it, or it stayed idle through the drain's grace (or the keep-alive timeout)."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        try:
            while True:
                if self.request_arrived():
                    return True
                now = time.monotonic()
                if DRAIN.since is not None:
                    idle = now - max(self.last_active, DRAIN.since)
                    if idle >= IDLE_GRACE:
                        return False  # idle through the whole grace: close
                    timeout = min(POLL, IDLE_GRACE - idle)
                else:
                    if now - self.last_active >= KEEP_ALIVE_TIMEOUT:
                        return False
                    timeout = POLL
                if poller.poll(timeout * 1000):
                    # Readable: a request arrived, or the peer closed (readable, nothing to read).
                    return self.request_arrived()
        except OSError:
            return False


def watchdog_period():
    """The watchdog period in seconds the supervisor gave this process, or None."""
    if os.environ.get("WATCHDOG_PID") != str(os.getpid()):
        return None
    try:
        usec = int(os.environ["WATCHDOG_USEC"])
    except (KeyError, ValueError):
        return None
    return usec / 1_000_000 if usec > 0 else None


WATCHDOG = watchdog_period()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    last_ping = 0.0

    def service_actions(self):
        """Called by serve_forever on every turn of the accept loop: the watchdog's heartbeat."""
        now = time.monotonic()
        if WATCHDOG and now - self.last_ping >= WATCHDOG / 4:
            self.last_ping = now
            notify("WATCHDOG=1")

    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()  # the unbound socket the constructor made; ours is inherited
        # Non-blocking: every worker's accept loop wakes up for a new connection on the shared
        # socket and only one gets it; a blocking accept() would hang the others (and their drain).
        sock.setblocking(False)
        self.socket = sock
        self.address_family = sock.family
        self.server_name, self.server_port = "supervisor-worker", 0

    def get_request(self):
        conn, addr = self.socket.accept()  # BlockingIOError when another worker was faster: skipped
        conn.setblocking(True)
        return conn, addr

    def process_request(self, request, client_address):
        # Counted here, in the accept loop, so a connection accepted just before the drain
        # cannot be missed while its thread is starting.
        DRAIN.opened()
        try:
            super().process_request(request, client_address)
        except BaseException:
            DRAIN.closed()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            DRAIN.closed()


def inherited_sockets():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("stdlib_worker: no inherited sockets (LISTEN_PID is not this process): run me as a supervisor worker")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        sys.exit("stdlib_worker: LISTEN_FDS is 0: give the supervisor a [[listen]] entry")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    # fileno= alone: Python reads family and type from the fd (AF_INET, AF_INET6 or AF_UNIX).
    return [socket.socket(fileno=fd) for fd in range(3, 3 + count)]


def main():
    servers = [Server(sock) for sock in inherited_sockets()]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in servers]
    for t in threads:
        t.start()
    notify("READY=1\nSTATUS=stdlib http.server serving")

    while not stop.wait(1):
        pass
    DRAIN.since = time.monotonic()
    for s in servers:
        s.shutdown()  # the accept loop ends (within poll_interval)
        s.socket.close()  # our copy of the listening socket: new connections go to the others
    notify("STOPPING=1")
    print(f"draining: listeners closed, {DRAIN.open} connection(s) open", file=sys.stderr, flush=True)
    if DRAIN.all_closed.wait(max(DEADLINE - (time.monotonic() - DRAIN.since), 0)):
        print(f"drained in {(time.monotonic() - DRAIN.since) * 1000:.0f} ms", file=sys.stderr, flush=True)
    else:
        print(f"drain deadline: dropping {DRAIN.open} connection(s)", file=sys.stderr, flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
