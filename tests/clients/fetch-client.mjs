// A sequential keep-alive client on Node's built-in fetch (undici), which does not retry a request
// that fails on a connection the server closed. Usage: node fetch-client.mjs URL SECONDS
// Prints one JSON line: {"ok": N, "failed": M, "errors": [...first errors...]}.
const [url, seconds] = process.argv.slice(2);
const until = Date.now() + Number(seconds) * 1000;
let ok = 0;
let failed = 0;
const errors = [];
while (Date.now() < until) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(10000) });
    await res.text();
    if (res.ok) ok += 1;
    else {
      failed += 1;
      if (errors.length < 10) errors.push(`status ${res.status}`);
    }
  } catch (e) {
    failed += 1;
    if (errors.length < 10) errors.push(`${e.message}: ${e.cause ? e.cause.code || e.cause.message : ""}`);
  }
}
console.log(JSON.stringify({ ok, failed, errors }));
