// The seeds' cluster primary: forks one worker per CPU running index.js.
const cluster = require("cluster");
const os = require("os");
if (cluster.isPrimary) {
  for (let i = 0; i < (Number(process.env.WORKERS) || os.cpus().length); i++) cluster.fork();
  cluster.on("exit", (w) => console.log(`worker ${w.process.pid} died`));
} else {
  require("./index.js");
}
