# ASGI app for the uvicorn example: / (answers with its pid), /heavy (a few ms of CPU), /healthz.
import os

from pages import page

if os.environ.get("APP_FAIL_AT_IMPORT"):
    raise RuntimeError("APP_FAIL_AT_IMPORT is set: this app refuses to start")


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
    status, body = page(scope["path"])
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
