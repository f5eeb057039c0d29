# Test client: one requests.Session sending sequential GETs for a while; prints ok=N failed=M pids=K (a reload must fail none).
"""Usage: client_requests.py HOST:PORT SECONDS [PATH] [--pause-ms MS]

Runs for SECONDS, or until SIGTERM/SIGINT (the request under way is finished first).

requests (urllib3) does not retry a request that got no answer on a reused keep-alive
connection: any connection reset or close without a response during a reload shows up here as a
failure. Exits 0 when nothing failed, 1 otherwise.
"""

import argparse
import signal
import sys
import time

import requests


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("addr", help="HOST:PORT")
    parser.add_argument("seconds", type=float)
    parser.add_argument("path", nargs="?", default="/")
    parser.add_argument("--pause-ms", type=float, default=0, help="idle time between requests")
    args = parser.parse_args()

    url = f"http://{args.addr}{args.path}"
    session = requests.Session()  # keep-alive, no retries (max_retries=0)
    ok = failed = 0
    pids = set()
    errors = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    end = time.monotonic() + args.seconds
    while time.monotonic() < end and not stop:
        try:
            resp = session.get(url, timeout=10)
            if 200 <= resp.status_code < 300:
                ok += 1
                for word in resp.text.split():
                    if word.startswith("pid="):
                        pids.add(word[4:])
            else:
                failed += 1
                errors.append(f"status {resp.status_code}")
        except requests.RequestException as e:
            failed += 1
            errors.append(repr(e))
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)
    for e in errors[:10]:
        print(f"error: {e}", file=sys.stderr)
    print(f"ok={ok} failed={failed} pids={len(pids)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
