# WSGI app for the gunicorn example: / (answers with its pid), /heavy (a few ms of CPU), /healthz.
import os

from pages import page

# A reload into an app that fails at import must abort (the old workers keep serving): with
# gunicorn's --preload the import happens before gunicorn reports READY=1. Set this to try it.
if os.environ.get("APP_FAIL_AT_IMPORT"):
    raise RuntimeError("APP_FAIL_AT_IMPORT is set: this app refuses to start")


STATUS = {200: "200 OK", 404: "404 Not Found"}


def app(environ, start_response):
    status, body = page(environ.get("PATH_INFO", "/"))
    start_response(STATUS[status], [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
