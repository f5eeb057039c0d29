// The same app written as CommonJS (require), as most PM2 and Express guides show it.
const express = require("express");

const port = process.env.PORT || 3000;
const app = express();

app.get("/", (req, res) => res.send(`node pid=${process.pid}\n`));
app.get("/heavy", (req, res) => {
  let total = 0;
  for (let i = 0; i < 5_000_000; i++) {
    total++;
  }
  res.send(`The result of the CPU intensive task is ${total}\n`);
});

app.listen(port, () => console.log(`App listening on port ${port}`));
