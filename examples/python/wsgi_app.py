# WSGI app for the gunicorn example: / (answers with its pid), /heavy (a few ms of CPU), /healthz.
import os

# A reload into an app that fails at import must abort (the old workers keep serving): with
# gunicorn's --preload the import happens before gunicorn reports READY=1. Set this to try it.
if os.environ.get("APP_FAIL_AT_IMPORT"):
    raise RuntimeError("APP_FAIL_AT_IMPORT is set: this app refuses to start")


def heavy():
    """A few milliseconds of pure-Python CPU work."""
    total = 0
    for i in range(60_000):
        total += i * i
    return total


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        body = f"python pid={os.getpid()}\n".encode()
    elif path == "/heavy":
        body = f"python pid={os.getpid()} heavy={heavy()}\n".encode()
    elif path == "/healthz":
        body = b"ok\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
