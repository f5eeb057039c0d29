// A small socket.io chat server, written the way socket.io's docs teach it: an http server, a
// socket.io Server on it, listen(PORT). Nothing here knows about the supervisor; run as several
// workers it needs `balance = "sticky"` (see README.md).
const http = require("http");
const { Server } = require("socket.io");

const port = process.env.PORT || 3000;

const httpServer = http.createServer((req, res) => {
  res.setHeader("Content-Type", "text/plain");
  res.end(`socket.io chat, worker pid=${process.pid}\n`);
});
const io = new Server(httpServer);

io.on("connection", (socket) => {
  socket.emit("welcome", { pid: process.pid, id: socket.id });

  // Rooms live in this worker's memory: clients in other workers are reached only through an
  // adapter (e.g. @socket.io/redis-adapter), which sticky balancing does not replace.
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack({ pid: process.pid, room: String(room) });
  });

  socket.on("chat", (msg, ack) => {
    const reply = {
      pid: process.pid,
      from: socket.id,
      text: String(msg && msg.text !== undefined ? msg.text : msg),
      at: Date.now(),
    };
    if (msg && typeof msg.room === "string") socket.to(msg.room).emit("chat", reply);
    if (typeof ack === "function") ack(reply);
  });
});

httpServer.listen(port, () => console.log(`socket.io chat listening on port ${port} (pid ${process.pid})`));
