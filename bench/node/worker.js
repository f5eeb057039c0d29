// The seeds' app as a supervisor worker: serve on the inherited socket (fd 3, LISTEN_FDS) and
// report readiness on READY_FD (Node has no datagram sockets for NOTIFY_SOCKET). On SIGTERM stop
// accepting, let in-flight requests finish, and close idle keep-alive connections.
const fs = require("fs");
const express = require("express");
const app = express();
app.get("/", (req, res) => res.send(`node pid=${process.pid} generation=${process.env.SUPERVISOR_GENERATION}\n`));
app.get("/healthz", (req, res) => res.send("ok\n"));
app.get("/heavy", (req, res) => {
  let total = 0;
  for (let i = 0; i < 5_000_000; i++) total++;
  res.send(`The result of the CPU intensive task is ${total}\n`);
});
const inherited = Number(process.env.LISTEN_FDS || 0) > 0 && Number(process.env.LISTEN_PID) === process.pid;
const server = app.listen(inherited ? { fd: 3 } : { port: Number(process.env.PORT || 3000) }, () => {
  if (process.env.READY_FD) fs.writeSync(Number(process.env.READY_FD), "\n");
});
let draining = false;
app.use((req, res, next) => { if (draining) res.set("Connection", "close"); next(); });
process.on("SIGTERM", () => {
  draining = true;
  server.close(() => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), 1000);
});
