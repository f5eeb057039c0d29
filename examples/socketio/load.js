// Load for the socket.io chat server (server.js): N socket.io-client connections, each its own
// engine.io session (from its own source address with --sources), each sending "chat" messages
// and waiting for their acks, until --duration-ms is over or, with --until-stdin-closes, stdin
// ends. Then it stops sending, lets disconnected clients reconnect (up to --settle-ms), and prints
// ONE JSON line on stdout: what connected, what was acked, session errors and HTTP failures by
// kind, every disconnect (reason, WebSocket close code, time until reconnected) and which worker
// pids served. Progress goes to stderr as JSON lines: {"event":"connected",...} once every client
// is connected (and upgraded to WebSocket, unless --polling).
//
//   node load.js --url http://127.0.0.1:3000 --clients 100 --polling --sources 100 --duration-ms 5000
//
// Options (all optional):
//   --url URL               server (default http://127.0.0.1:3000)
//   --clients N             connections (default 100)
//   --polling               force HTTP long-polling (transports: ["polling"]); default: socket.io's
//                           default, polling then upgrade to WebSocket
//   --sources N             bind client i to source address 127.0.0.(2 + i % N) (0: the OS picks)
//   --interval-ms MS        pause between a client's acked message and its next (default 100)
//   --duration-ms MS        how long to send (default 5000); with --until-stdin-closes, the cap
//   --until-stdin-closes    stop sending when stdin ends (a test drives the load's length)
//   --settle-ms MS          at the end, how long to wait for disconnected clients (default 5000)
//   --ack-timeout-ms MS     an unacked message is a failure after this (default 5000)
//   --connect-timeout-ms MS deadline for the first connect of every client (default 15000)
//
// What is counted:
//   session_errors  events that cost a client its session or its connect: connect_error (a
//                   connect or reconnect that failed), disconnects of a connected client that
//                   are errors ("transport error", "ping timeout", "parse error"), failed
//                   upgrades to WebSocket; and, request by request, the HTTP
//                   answers behind them: session_unknown (400, engine.io's "Session ID unknown":
//                   the request reached a worker that does not hold the session) and bad_request
//                   (any other 400). `total` sums the events, not the 400s
//   http_failures   requests and WebSocket handshakes that got no HTTP answer (refused, reset:
//                   no_answer) or an answer other than 101, 200 and 400 (by status)
//   disconnects     by socket.io's reason, with close_codes (1012: a worker restarting) and the
//                   time from each disconnect until that client was connected again
"use strict";

const http = require("http");
const { io } = require("socket.io-client");

function parseArgs(argv) {
  const opts = {
    url: "http://127.0.0.1:3000",
    clients: 100,
    polling: false,
    sources: 0,
    intervalMs: 100,
    durationMs: 5000,
    untilStdinCloses: false,
    settleMs: 5000,
    ackTimeoutMs: 5000,
    connectTimeoutMs: 15000,
  };
  const numeric = {
    "--clients": "clients",
    "--sources": "sources",
    "--interval-ms": "intervalMs",
    "--duration-ms": "durationMs",
    "--settle-ms": "settleMs",
    "--ack-timeout-ms": "ackTimeoutMs",
    "--connect-timeout-ms": "connectTimeoutMs",
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--url") opts.url = argv[++i];
    else if (a === "--polling") opts.polling = true;
    else if (a === "--until-stdin-closes") opts.untilStdinCloses = true;
    else if (numeric[a]) {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v < 0) throw new Error(`${a} wants a number >= 0, got ${argv[i]}`);
      opts[numeric[a]] = v;
    } else throw new Error(`unknown option ${a} (see the head of load.js)`);
  }
  if (opts.sources > 253) throw new Error(`--sources is at most 253 (127.0.0.2 .. 127.0.0.254)`);
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const started = Date.now();
const progress = (o) => process.stderr.write(JSON.stringify({ ...o, at_ms: Date.now() - started }) + "\n");

const session = {
  total: 0,
  connect_error: 0,
  transport_error: 0,
  ping_timeout: 0,
  parse_error: 0,
  upgrade_failed: 0,
  session_unknown: 0,
  bad_request: 0,
};
const httpFailures = { total: 0, no_answer: 0, status: {} };
const disconnectReasons = {};
const closeCodes = {};
const errorSamples = [];
let sent = 0;
let acked = 0;
let ackFailed = 0;
const ackedByPid = {};
let sending = true;

// Every failed HTTP request or WebSocket handshake, seen where engine.io-client's transports report
// it (a polling request: `description` is the XHR status, `context` the XHR; a WebSocket: the
// `ws` error event), including those that come after the session is already lost.
function httpError(transportName, err) {
  const d = err && err.description;
  let status;
  let detail = "";
  if (typeof d === "number") {
    status = d;
    const ctx = err.context;
    if (ctx && typeof ctx.responseText === "string") detail = ctx.responseText.slice(0, 80);
    if (status === 0 && ctx && ctx.statusText) detail = String(ctx.statusText.code || ctx.statusText);
  } else if (d && typeof d.message === "string") {
    const m = /Unexpected server response: (\d+)/.exec(d.message);
    status = m ? Number(m[1]) : 0;
    detail = d.message;
  } else return; // not an HTTP-level error (e.g. a parse error)
  if (status === 400 && detail.includes("Session ID unknown")) session.session_unknown++;
  else if (status === 400) session.bad_request++;
  else {
    httpFailures.total++;
    if (status === 0) httpFailures.no_answer++;
    else httpFailures.status[status] = (httpFailures.status[status] || 0) + 1;
  }
  if (errorSamples.length < 10) errorSamples.push({ transport: transportName, message: String(err.message), status, detail });
}

const { Socket: EngineSocket } = require("engine.io-client");
const createTransport = EngineSocket.prototype.createTransport;
EngineSocket.prototype.createTransport = function countingCreateTransport(name) {
  const transport = createTransport.call(this, name);
  transport.on("error", (err) => httpError(name, err));
  return transport;
};

function makeClient(i) {
  const c = {
    i,
    socket: null,
    connectedOnce: false,
    up: false,
    pids: new Set(),
    disconnects: [], // {reason, code, at, reconnectMs}
    downSince: null,
  };
  const extra = {};
  if (opts.sources > 0) {
    const localAddress = `127.0.0.${2 + (i % opts.sources)}`;
    extra.agent = new http.Agent({ localAddress, keepAlive: false });
    extra.localAddress = localAddress;
  }
  const socket = io(opts.url, {
    forceNew: true,
    transports: opts.polling ? ["polling"] : ["polling", "websocket"],
    ...extra,
  });
  c.socket = socket;
  socket.on("connect", () => {
    c.connectedOnce = true;
    c.up = true;
    if (c.downSince !== null) {
      const last = c.disconnects[c.disconnects.length - 1];
      if (last && last.reconnectMs === null) last.reconnectMs = Date.now() - c.downSince;
      c.downSince = null;
    }
    socket.io.engine.on("upgradeError", () => {
      session.total++;
      session.upgrade_failed++;
    });
  });
  socket.on("welcome", (w) => c.pids.add(w.pid));
  socket.on("connect_error", () => {
    session.total++;
    session.connect_error++;
    const last = c.disconnects[c.disconnects.length - 1];
    if (c.downSince !== null && last) last.failedAttempts++;
  });
  socket.on("disconnect", (reason, details) => {
    // socket.io-client also says "disconnect" when a session fails before its connect (its
    // CONNECT packet got an error): that failure was counted as a connect_error already.
    if (!c.up) return;
    c.up = false;
    disconnectReasons[reason] = (disconnectReasons[reason] || 0) + 1;
    const code = details && details.context && typeof details.context.code === "number" ? details.context.code : null;
    if (code !== null) closeCodes[code] = (closeCodes[code] || 0) + 1;
    if (reason === "transport error" || reason === "ping timeout" || reason === "parse error") {
      session.total++;
      session[reason.replace(" ", "_")]++;
    }
    c.disconnects.push({ reason, code, at: Date.now() - started, reconnectMs: null, failedAttempts: 0 });
    c.downSince = Date.now();
  });
  const tick = () => {
    if (!sending) return;
    if (!socket.connected) {
      setTimeout(tick, 20);
      return;
    }
    sent++;
    socket.timeout(opts.ackTimeoutMs).emit("chat", { text: `hello ${sent} from client ${i}` }, (err, reply) => {
      if (err || !reply) ackFailed++;
      else {
        acked++;
        ackedByPid[reply.pid] = (ackedByPid[reply.pid] || 0) + 1;
        c.pids.add(reply.pid);
      }
      setTimeout(tick, opts.intervalMs);
    });
  };
  tick();
  return c;
}

// A disconnect as the summary shows it.
function entry(d) {
  return { reason: d.reason, code: d.code, at_ms: d.at, reconnect_ms: d.reconnectMs, failed_attempts: d.failedAttempts };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(deadlineMs, cond) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}

async function main() {
  const clients = [];
  for (let i = 0; i < opts.clients; i++) clients.push(makeClient(i));

  const upgraded = () => clients.filter((c) => c.socket.connected && c.socket.io.engine.transport.name === "websocket").length;
  const allUp = await waitUntil(opts.connectTimeoutMs, () =>
    clients.every((c) => c.socket.connected) && (opts.polling || upgraded() === clients.length)
  );
  progress({
    event: allUp ? "connected" : "connect_deadline",
    clients: clients.filter((c) => c.socket.connected).length,
    upgraded: upgraded(),
  });

  let stdinClosed = false;
  if (opts.untilStdinCloses) {
    process.stdin.on("end", () => (stdinClosed = true));
    process.stdin.on("close", () => (stdinClosed = true));
    process.stdin.resume();
  }
  await waitUntil(opts.durationMs, () => stdinClosed);
  sending = false;

  // Let in-flight acks land and disconnected clients come back.
  await waitUntil(opts.settleMs, () => clients.every((c) => c.socket.connected));
  await sleep(Math.min(opts.ackTimeoutMs, 200));

  const reconnects = [];
  const slowest = [];
  let neverReconnected = 0;
  for (const c of clients) {
    for (const d of c.disconnects) {
      if (d.reconnectMs === null) neverReconnected++;
      else reconnects.push(d.reconnectMs);
      slowest.push({ client: c.i, ...entry(d) });
    }
  }
  reconnects.sort((a, b) => a - b);
  slowest.sort((a, b) => (b.reconnect_ms === null ? Infinity : b.reconnect_ms) - (a.reconnect_ms === null ? Infinity : a.reconnect_ms));

  const summary = {
    clients: clients.length,
    transports: opts.polling ? "polling" : "polling+websocket",
    connected: clients.filter((c) => c.connectedOnce).length,
    connected_at_end: clients.filter((c) => c.socket.connected).length,
    websocket_at_end: upgraded(),
    sent,
    acked,
    ack_failed: ackFailed,
    session_errors: session,
    http_failures: httpFailures,
    disconnects: disconnectReasons,
    close_codes: closeCodes,
    reconnect_ms: {
      count: reconnects.length,
      max: reconnects.length ? reconnects[reconnects.length - 1] : null,
      p99: percentile(reconnects, 99),
      never: neverReconnected,
      slowest: slowest.slice(0, 5),
    },
    pids: ackedByPid,
    clients_on_more_than_one_pid: clients.filter((c) => c.pids.size > 1).length,
    error_samples: errorSamples,
    // Every client that was disconnected: the pids that served it and its first disconnects.
    per_client: clients
      .filter((c) => c.disconnects.length > 0)
      .map((c) => ({
        client: c.i,
        pids: [...c.pids],
        disconnects: c.disconnects.length,
        first: c.disconnects.slice(0, 8).map(entry),
      })),
    elapsed_ms: Date.now() - started,
  };
  process.stdout.write(JSON.stringify(summary) + "\n");
  for (const c of clients) c.socket.disconnect();
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`load.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
