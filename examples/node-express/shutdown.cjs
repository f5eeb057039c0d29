// An app with its own graceful shutdown, the pattern Express's docs and most tutorials give:
// on SIGTERM close the server, then exit. Under supervisor it needs nothing else.
const http = require("http");
const express = require("express");

const app = express();
app.get("/", (req, res) => res.send(`node pid=${process.pid}\n`));
app.get("/heavy", (req, res) => {
  let total = 0;
  for (let i = 0; i < 5_000_000; i++) total++;
  res.send(`The result of the CPU intensive task is ${total}\n`);
});

const server = http.createServer(app);
server.listen(3000, "0.0.0.0", () => console.log("listening on 3000"));

process.on("SIGTERM", () => {
  console.log("SIGTERM: closing the server");
  server.close(() => {
    console.log("server closed; bye");
    process.exit(0);
  });
});
