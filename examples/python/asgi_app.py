# ASGI app for the uvicorn example: / (answers with its pid), /heavy (a few ms of CPU), /healthz.
import os

if os.environ.get("APP_FAIL_AT_IMPORT"):
    raise RuntimeError("APP_FAIL_AT_IMPORT is set: this app refuses to start")


def heavy():
    """A few milliseconds of pure-Python CPU work."""
    total = 0
    for i in range(60_000):
        total += i * i
    return total


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        # Startup work (connection pools, caches) goes here; the launcher reports READY=1 only
        # after "lifespan.startup.complete".
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 200
    if path == "/":
        body = f"python pid={os.getpid()}\n".encode()
    elif path == "/heavy":
        body = f"python pid={os.getpid()} heavy={heavy()}\n".encode()
    elif path == "/healthz":
        body = b"ok\n"
    else:
        status, body = 404, b"not found\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
