// The supervisor's Node preload: loaded with `--require` (through NODE_OPTIONS) into every worker
// of a `runtime = "node"` app, so that an unchanged Node app (Express, Fastify, Koa, NestJS, plain
// http/https/net; CommonJS or ESM) runs as a supervisor worker:
//
//  - `server.listen(...)` in any form takes the inherited socket (LISTEN_FDS) whose port (or unix
//    path) matches; a port (or path) the supervisor does not hold is a configuration error: it
//    would not be shared with the other workers (the second one fails with EADDRINUSE) nor kept
//    across a reload, and clients of the held port would wait for nobody. The worker says so once
//    per generation, at WARN, with the fix, and exits 78 (EX_CONFIG): the start or reload fails
//    at once instead of at its ready timeout;
//  - with a `watchdog` (WATCHDOG_USEC), a heartbeat from the event loop itself on READY_FD after
//    the ready newline (`WATCHDOG=1` and the loop's lag), so a blocked event loop is replaced;
//  - readiness (a newline on READY_FD) is reported once every inherited socket is listened on,
//    and, with `wait_ready` (PM2's name; SUPERVISOR_WAIT_READY=1), once the app has also called
//    `process.send('ready')`;
//  - a request with Supervisor-Job-* headers but not the supervisor's job secret is answered 403
//    before the app sees it (a `[[job]] http` request is the supervisor's only);
//  - PM2's app protocol without PM2's IPC channel: `process.send` exists and never throws (an
//    app written to PM2's docs calls it unguarded), `NODE_APP_INSTANCE` is the worker's slot;
//  - the drain signal (SIGTERM, or the app's `kill_signal`: SUPERVISOR_KILL_SIGNAL, e.g. SIGINT
//    as PM2 sends) drains like crates/worker, and with `shutdown_with_message`
//    (SUPERVISOR_SHUTDOWN_MESSAGE=1) the app's `process.on('message')` gets 'shutdown' too: stop accepting at once, every response from then on carries
//    `Connection: close`, an idle keep-alive connection is closed only after DRAIN_IDLE_GRACE_MS
//    of idleness (counted from the drain's start or its last request), exit 0 when the last
//    connection is gone, hard deadline 500 ms inside SUPERVISOR_KILL_TIMEOUT_MS. The app's own
//    handlers of that signal still run; `server.close()` and `process.exit()` called from them
//    wait for the drain instead of cutting it short. A WebSocket (an HTTP upgrade to
//    `websocket`), which never ends on its own, is sent a close frame with code 1012 (service
//    restart) once it has had the same grace, so its client (`ws`, socket.io, browsers)
//    reconnects, to a live worker, instead of being cut at the kill timeout.
//
// It is shipped inside the supervisor binary and written to the supervisor's private runtime
// directory; it is inert in any process that is not the worker itself (LISTEN_PID differs), such
// as children the app spawns with the same NODE_OPTIONS.
"use strict";

// `supervisor start app.js` with no config: run once with SUPERVISOR_DISCOVER=1 to learn which
// port (or path) the app's first listen() asks for; it prints it and exits before listening.
(function supervisorDiscover() {
  if (process.env.SUPERVISOR_DISCOVER !== "1") return;
  const fs = require("fs");
  const net = require("net");
  net.Server.prototype.listen = function discoverListen(...args) {
    const first = args[0];
    let want = { port: 0 };
    if (first !== null && typeof first === "object") {
      if (typeof first.path === "string" && first.path !== "") want = { path: first.path };
      else want = { port: Number(first.port || 0), host: typeof first.host === "string" ? first.host : undefined };
    } else if (typeof first === "string" && !(Number(first) >= 0)) {
      want = { path: first };
    } else if (typeof first === "number" || typeof first === "string") {
      want = { port: Number(first), host: typeof args[1] === "string" ? args[1] : undefined };
    }
    fs.writeSync(1, `\nsupervisor-discover: ${JSON.stringify(want)}\n`);
    process.exit(0);
  };
})();

(function supervisorPreload() {
  const env = process.env;
  if (!env.LISTEN_PID || Number(env.LISTEN_PID) !== process.pid) return;

  const fs = require("fs");
  const net = require("net");
  const http = require("http");
  const https = require("https");
  const pathModule = require("path");
  const { performance } = require("perf_hooks");

  const PREFIX = "supervisor-preload:";
  // With its level first, which the supervisor reads (a stderr line without one is a WARN).
  const log = (msg, level = "WARN") => {
    try {
      process.stderr.write(`${level} ${PREFIX} ${msg}\n`);
    } catch (_) {
      // stderr gone: nothing to tell anyone.
    }
  };
  const envMs = (name, fallback) => {
    const n = Number(env[name]);
    return Number.isFinite(n) && n >= 0 && env[name] !== "" && env[name] !== undefined ? n : fallback;
  };

  // The inherited sockets, in fd order: [{name, fd, port?, address?, path?, backlog}].
  let listeners = [];
  try {
    listeners = JSON.parse(env.SUPERVISOR_LISTENERS || "[]");
  } catch (e) {
    log(`SUPERVISOR_LISTENERS is not JSON (${e.message}); no inherited socket will be used`);
  }
  const describe = (l) => `${l.path ? `unix:${l.path}` : l.address} (${l.name})`;
  const held = listeners.map(describe).join(", ");

  // ---- readiness ----
  const taken = new Set(); // fds some server in this process listens on
  const waitReady = env.SUPERVISOR_WAIT_READY === "1";
  let appSaidReady = false; // process.send('ready') was called
  let readySent = false;
  function maybeReady() {
    if (readySent || listeners.some((l) => !taken.has(l.fd))) return;
    if (waitReady && !appSaidReady) return;
    readySent = true;
    const fd = Number(env.READY_FD);
    if (!Number.isInteger(fd) || fd < 0) return;
    try {
      fs.writeSync(fd, "\n");
      if (watchdogMs > 0) startHeartbeat(fd);
      else fs.closeSync(fd);
    } catch (e) {
      log(`cannot report readiness on READY_FD=${fd}: ${e.message}`);
    }
  }

  // ---- watchdog (systemd's protocol, WATCHDOG_USEC for this pid): the heartbeat is a timer of
  // the event loop itself, so a loop blocked by a runaway handler (`while (true) {}`, a
  // catastrophic regex) stops it and the supervisor replaces the worker. Each beat also says how
  // late the timer ran: the event loop's lag. Beats go on the readiness pipe, one line each. ----
  const watchdogMs =
    Number(env.WATCHDOG_PID) === process.pid && Number(env.WATCHDOG_USEC) > 0 ? Number(env.WATCHDOG_USEC) / 1000 : 0;
  function startHeartbeat(fd) {
    const every = Math.max(watchdogMs / 4, 10);
    let last = performance.now();
    const beat = () => {
      const now = performance.now();
      const lag = Math.max(0, now - last - every);
      last = now;
      try {
        fs.writeSync(fd, `WATCHDOG=1\nX_EVENT_LOOP_LAG_MS=${lag.toFixed(1)}\n`);
      } catch (e) {
        clearInterval(timer);
      }
    };
    const timer = setInterval(beat, every);
    timer.unref();
    beat();
  }
  if (listeners.length === 0) setImmediate(maybeReady);

  // ---- wait_ready: accept nothing before the app says ready ----
  // Every worker accepts from the same inherited socket, so a worker that listened would take
  // connections while it warms up (and answer them 503, or late). With `wait_ready` the app's
  // listen() is answered at once (its callback and 'listening' run, `address()` answers) but
  // the socket is taken only when the app calls process.send('ready'): until then the workers
  // already serving take every connection. Readiness follows the real listen.
  const deferred = []; // listens held until process.send('ready')
  function addressOf(l) {
    if (l.path) return l.path;
    const host = String(l.address || "").replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
    return { address: host, family: host.includes(":") ? "IPv6" : "IPv4", port: l.port };
  }
  function listenWhenReady(server, l, options, cb) {
    const address = addressOf(l);
    server.address = () => address;
    deferred.push(() => {
      delete server.address; // the prototype's again, now that the socket is taken
      origListen.call(server, options);
    });
    process.nextTick(() => {
      if (cb) cb.call(server);
      server.emit("listening");
    });
    return server;
  }
  function listenDeferred() {
    for (const listen of deferred.splice(0)) listen();
  }

  // ---- PM2's process.send, with no IPC channel ----
  // Under PM2 a worker has an IPC channel and `process.send('ready')` tells PM2 it is ready;
  // here there is none, and Node leaves `process.send` undefined: an app that calls it unguarded
  // would crash. It exists, takes 'ready' (also as {type: 'ready'}) and never throws; with a real
  // channel (the app forked by its own parent) messages still go there too.
  const channelSend = typeof process.send === "function" ? process.send.bind(process) : undefined;
  process.send = function send(message, ...rest) {
    if (message === "ready" || (message && typeof message === "object" && message.type === "ready")) {
      if (!appSaidReady) {
        appSaidReady = true;
        if (waitReady) {
          listenDeferred();
          maybeReady();
        }
      }
    }
    if (channelSend) return channelSend(message, ...rest);
    const cb = rest.find((a) => typeof a === "function");
    if (cb) setImmediate(cb, null);
    return true;
  };

  // ---- listen: which inherited socket does a listen() call mean? ----
  // Mirrors Node's own argument normalisation: listen(port[, host][, backlog][, cb]),
  // listen(path[, backlog][, cb]), listen(options[, cb]), listen(handle[, backlog][, cb]), listen().
  function requested(args) {
    const first = args[0];
    if (first !== null && typeof first === "object") {
      if (typeof first.fd === "number") return { fd: first.fd };
      if (first._handle || first.handle) return { handle: true };
      if (typeof first.path === "string" && first.path !== "") return { path: first.path };
      return { port: first.port === undefined ? 0 : Number(first.port), options: first };
    }
    if (typeof first === "string" && !(Number(first) >= 0)) return { path: first };
    if (typeof first === "number" || typeof first === "string") return { port: Number(first) };
    return { port: 0 };
  }

  function match(want) {
    if (want.fd !== undefined) return listeners.find((l) => l.fd === want.fd);
    if (want.path !== undefined) {
      const p = pathModule.resolve(want.path);
      return listeners.find((l) => l.path && pathModule.resolve(l.path) === p);
    }
    if (want.port) return listeners.find((l) => l.port === want.port);
    return undefined;
  }

  const warned = new Set();
  const origListen = net.Server.prototype.listen;
  net.Server.prototype.listen = function listen(...args) {
    const want = requested(args);
    const l = match(want);
    track(this);
    if (l && want.fd === undefined) {
      if (!taken.has(l.fd)) {
        const cb = typeof args[args.length - 1] === "function" ? args[args.length - 1] : undefined;
        const options = { fd: l.fd, backlog: l.backlog };
        if (want.options && want.options.signal) options.signal = want.options.signal;
        this.once("listening", () => {
          taken.add(l.fd);
          maybeReady();
        });
        if (waitReady && !appSaidReady) return listenWhenReady(this, l, options, cb);
        return cb ? origListen.call(this, options, cb) : origListen.call(this, options);
      }
      const key = `taken:${l.fd}`;
      if (!warned.has(key)) {
        warned.add(key);
        log(`a second server listens on ${describe(l)}, which another server of this process already took; it listens directly`);
      }
    } else if (l) {
      this.once("listening", () => {
        taken.add(l.fd);
        maybeReady();
      });
    } else if (want.port || want.path) {
      unheld(want, args);
    }
    return origListen.apply(this, args);
  };

  // A listen() on a port or path the supervisor does not hold: said once per generation (the
  // first worker to get here says it; the others of its generation exit quietly), with the fix.
  const EX_CONFIG = 78;
  function unheld(want, args) {
    const what = want.path ? `unix:${want.path}` : `port ${want.port}`;
    const app = env.SUPERVISOR_APP || "this app";
    const host =
      (want.options && typeof want.options.host === "string" && want.options.host) ||
      (typeof args[1] === "string" && args[1]) ||
      "0.0.0.0";
    const table = want.path ? `path = "${want.path}"` : `address = "${host}:${want.port}"`;
    const fix =
      `give it to the supervisor in the config: [[app.listen]] ${table} under the [[app]] named ${JSON.stringify(app)}` +
      (listeners.some((l) => l.port) ? `, or make the app listen on process.env.PORT (${env.PORT})` : "");
    let first = true;
    try {
      const marker = pathModule.join(__dirname, `unheld-${env.SUPERVISOR_GENERATION || 0}-${what.replace(/[^A-Za-z0-9]/g, "_")}`);
      fs.closeSync(fs.openSync(marker, "wx"));
    } catch (e) {
      first = e.code !== "EEXIST";
    }
    if (first) {
      try {
        process.stderr.write(
          `WARN ${PREFIX} the app listens on ${what}, which the supervisor does not hold (it holds ${held || "nothing"}): ` +
            `not shared with the other workers nor kept across reloads. Fix: ${fix}. Exiting with code ${EX_CONFIG} (configuration error)\n`,
        );
      } catch (_) {
        // stderr gone: the exit code says it.
      }
    }
    realExit.call(process, EX_CONFIG);
  }

  // ---- connection bookkeeping, for the drain ----
  const kState = Symbol("supervisor.connection");
  const servers = new Set(); // every server of this process that listened
  const tracked = new WeakSet();
  const inFlight = new Set(); // responses whose headers are not sent yet
  let draining = false;
  let drainStart = 0;

  function isHttp(server) {
    return server instanceof http.Server || server instanceof https.Server;
  }

  function track(server) {
    if (tracked.has(server)) return;
    tracked.add(server);
    server.once("listening", () => servers.add(server));
    server.once("close", () => {
      servers.delete(server);
      if (draining) check();
    });
    if (!isHttp(server)) {
      // http2 servers: a session is closed with a graceful GOAWAY when the drain starts.
      server.on("session", (session) => {
        if (draining) session.close();
        else (server[kState] || (server[kState] = new Set())).add(session);
      });
      return;
    }
    const conns = new Set();
    server[kState] = conns;
    const event = server instanceof https.Server ? "secureConnection" : "connection";
    server.on(event, (socket) => {
      socket[kState] = { busy: 0, last: performance.now(), websocket: false, closing: false };
      conns.add(socket);
      socket.once("close", () => {
        conns.delete(socket);
        if (draining) check();
      });
    });
    server.prependListener("request", onRequest);
    // A request that claims to be a `[[job]] http` run without the supervisor's secret is
    // answered 403 here: the app never sees it.
    const appEmit = server.emit;
    server.emit = function emit(event, ...args) {
      if (event === "request" && forgedJob(args[0], args[1])) return true;
      if (event === "upgrade") upgraded(args[0], args[1]);
      return appEmit.call(this, event, ...args);
    };
  }

  // ---- job requests the app can trust ----
  // The supervisor's `[[job]] http` requests carry Supervisor-Job-Name/-Tick/-Token/-Run and
  // Supervisor-Job-Secret, the secret every worker has in SUPERVISOR_JOB_SECRET. A request with
  // any Supervisor-Job-* header and a wrong or missing secret is refused (403) before the app's
  // handlers run; a genuine one reaches the app with the secret header removed (so no access
  // log writes it down): in a Node app, Supervisor-Job-* headers are the supervisor's.
  const crypto = require("crypto");
  const jobSecret = Buffer.from(env.SUPERVISOR_JOB_SECRET || "");
  let forged = 0;
  function forgedJob(req, res) {
    const headers = req && req.headers;
    if (!headers || !Object.keys(headers).some((k) => k.startsWith("supervisor-job-"))) return false;
    const given = Buffer.from(String(headers["supervisor-job-secret"] || ""));
    if (jobSecret.length > 0 && given.length === jobSecret.length && crypto.timingSafeEqual(given, jobSecret)) {
      delete headers["supervisor-job-secret"];
      const raw = req.rawHeaders;
      for (let i = raw.length - 2; i >= 0; i -= 2) {
        if (String(raw[i]).toLowerCase() === "supervisor-job-secret") raw.splice(i, 2);
      }
      return false;
    }
    forged += 1;
    if (forged === 1 || forged % 1000 === 0) {
      const from = (req.socket && req.socket.remoteAddress) || "?";
      log(`refused ${forged === 1 ? "a request" : `${forged} requests`} claiming to be a supervisor job without its secret (403; latest from ${from}, ${req.method} ${req.url})`);
    }
    if (draining) res.shouldKeepAlive = false;
    res.writeHead(403, { "content-type": "text/plain; charset=utf-8" });
    res.end("forbidden: Supervisor-Job-* headers without the supervisor's secret\n");
    return true;
  }

  // A connection upgraded to a WebSocket: closed with 1012 when the drain's grace is over.
  function upgraded(req, socket) {
    const st = socket && socket[kState];
    const protocol = String((req && req.headers && req.headers.upgrade) || "").toLowerCase();
    if (st && protocol === "websocket") st.websocket = true;
  }

  // The close frame, unmasked as a server sends it: FIN + opcode 8, 2 bytes of payload, the code
  // 1012 ("service restart": the client may reconnect at once).
  const serviceRestart = Buffer.from([0x88, 0x02, 0x03, 0xf4]);
  let websocketsClosed = 0;

  function closeWebSocket(socket, st) {
    if (st.closing) return;
    st.closing = true;
    websocketsClosed += 1;
    socket.end(serviceRestart);
    // The client answers with its own close frame and closes; one that does not is cut.
    setTimeout(() => socket.destroy(), 2000).unref();
  }

  function onRequest(req, res) {
    if (req.httpVersionMajor >= 2) return;
    const st = req.socket && req.socket[kState];
    if (st) {
      st.busy += 1;
      st.last = performance.now();
    }
    if (draining) res.shouldKeepAlive = false;
    else inFlight.add(res);
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      inFlight.delete(res);
      if (st) {
        st.busy -= 1;
        st.last = performance.now();
      }
      if (draining) check();
    };
    res.once("finish", end);
    res.once("close", end);
  }

  // Node 19+ closes idle keep-alive connections in http `server.close()`: a client that sends on
  // one at that instant gets a reset. While draining, idle connections are closed by the rule above.
  for (const proto of [http.Server.prototype, https.Server.prototype]) {
    const original = proto.closeIdleConnections;
    if (typeof original !== "function") continue;
    proto.closeIdleConnections = function closeIdleConnections(...args) {
      if (draining) return undefined;
      return original.apply(this, args);
    };
  }

  // ---- the drain ----
  const killTimeout = envMs("SUPERVISOR_KILL_TIMEOUT_MS", 30000);
  const deadline = Math.max(killTimeout - 500, 100);
  const grace = Math.min(envMs("DRAIN_IDLE_GRACE_MS", 1000), deadline);
  const realExit = process.exit;
  let exitCode; // set when the app asked to exit during the drain
  let appHandlers = false;
  let drained = false;
  let timer;

  process.exit = function exit(code) {
    if (draining && !drained) {
      exitCode = code === undefined ? (process.exitCode ?? 0) : code;
      return undefined;
    }
    return realExit.call(process, code);
  };

  function check() {
    if (drained) return;
    if (servers.size === 0) return finish(false);
    const t = performance.now();
    let next = Infinity;
    for (const server of servers) {
      const conns = server[kState];
      if (!(conns instanceof Set) || !isHttp(server)) continue;
      for (const socket of conns) {
        const st = socket[kState];
        if (st.busy > 0) {
          next = Math.min(next, grace);
          continue;
        }
        if (st.closing) continue;
        const idle = t - Math.max(st.last, drainStart);
        if (idle < grace) next = Math.min(next, grace - idle);
        else if (st.websocket) closeWebSocket(socket, st);
        else socket.destroy();
      }
    }
    clearTimeout(timer);
    if (next !== Infinity) timer = setTimeout(check, Math.ceil(next)).unref();
  }

  function finish(atDeadline) {
    if (drained) return;
    drained = true;
    clearTimeout(timer);
    const took = Math.round(performance.now() - drainStart);
    if (atDeadline) {
      let open = 0;
      for (const server of servers) {
        const conns = server[kState];
        if (conns instanceof Set) for (const c of conns) (open += 1), c.destroy();
      }
      log(`drain deadline (${deadline} ms) reached: ${open} connection(s) dropped`);
    } else {
      const ws = websocketsClosed > 0 ? ` (${websocketsClosed} WebSocket(s) closed with 1012, service restart)` : "";
      log(`drained in ${took} ms${ws}`, "INFO");
    }
    if (exitCode !== undefined || !appHandlers || atDeadline) realExit.call(process, exitCode ?? 0);
    // Otherwise the app's own handler of the drain signal is shutting it down: the process ends when its event
    // loop is empty, or at the deadline.
  }

  const drainSignal = /^SIG[A-Z0-9]+$/.test(env.SUPERVISOR_KILL_SIGNAL || "") ? env.SUPERVISOR_KILL_SIGNAL : "SIGTERM";
  const shutdownMessage = env.SUPERVISOR_SHUTDOWN_MESSAGE === "1";
  process.on(drainSignal, function supervisorDrain() {
    if (draining) {
      // Asked again (NestJS re-raises the signal after its own shutdown): exit once drained.
      if (drained) realExit.call(process, exitCode ?? 0);
      else if (exitCode === undefined) exitCode = 0;
      return;
    }
    draining = true;
    drainStart = performance.now();
    appHandlers =
      process.listenerCount(drainSignal) > 1 || (shutdownMessage && process.listenerCount("message") > 0);
    for (const res of inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
    inFlight.clear();
    let open = 0;
    for (const server of servers) {
      const conns = server[kState];
      if (conns instanceof Set) open += conns.size;
    }
    log(`${drainSignal}: stopped accepting; draining ${open} connection(s)`, "INFO");
    setTimeout(() => finish(true), deadline).unref();
    // PM2's shutdown_with_message: the app's message handlers run now, before its handlers of
    // this signal (one of which may end the process once its server has closed).
    if (shutdownMessage) process.emit("message", "shutdown");
    // After the app's own handlers of the drain signal (they run right after this one): close what they left
    // listening, with net's close, which does not drop idle keep-alive connections.
    setImmediate(() => {
      deferred.length = 0; // told to stop before it said ready: never take the socket
      for (const server of servers) {
        if (server.listening) net.Server.prototype.close.call(server);
        else if (deferred.length === 0 && waitReady && !appSaidReady) servers.delete(server);
        const sessions = server[kState];
        if (!isHttp(server) && sessions instanceof Set) for (const s of sessions) s.close();
      }
      check();
    });
  });
})();
