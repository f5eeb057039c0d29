# The examples' routes, shared by the WSGI, ASGI and stdlib apps: / (answers with its pid),
# /heavy (a few ms of pure-Python CPU work), /healthz; anything else is 404.
import os


def heavy():
    """A few milliseconds of pure-Python CPU work."""
    total = 0
    for i in range(60_000):
        total += i * i
    return total


def page(path):
    """(status, body) for a request path."""
    if path == "/":
        return 200, f"python pid={os.getpid()}\n".encode()
    if path == "/heavy":
        return 200, f"python pid={os.getpid()} heavy={heavy()}\n".encode()
    if path == "/healthz":
        return 200, b"ok\n"
    return 404, b"not found\n"
