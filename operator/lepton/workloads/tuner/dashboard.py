"""optuna-dashboard on a study's storage, read-only: in the tuner process (on the pod's loopback, so only
`kubectl port-forward` reaches it) and in `leptonctl tune dashboard --local` (on this machine's).

Read-only because the tuner is the study's only writer: optuna-dashboard can also tell trials, rename
(copy and delete) and delete studies, and any of those behind the tuner's back would break what the
operator and the tuner agree on. Every method but GET and HEAD gets 405.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from optuna.storages import BaseStorage

LOOPBACK = "127.0.0.1"
READ_METHODS = frozenset({"GET", "HEAD"})
INSTALL_HINT = "pip install 'lepton-operator[tune]'"
log = logging.getLogger("lepton.tuner")


class DashboardUnavailableError(RuntimeError):
    """optuna-dashboard is not importable here."""


def read_only(app: WSGIApplication) -> WSGIApplication:
    """`app` answering only GET and HEAD; anything else is refused before it reaches the app."""

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            body = json.dumps({"reason": "read-only dashboard: the study's tuner alone writes to it"}).encode()
            start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", "GET, HEAD"),
                                                      ("Content-Length", str(len(body)))])  # fmt: skip
            return [body]
        return app(environ, start_response)

    return guarded


def dashboard_app(storage: BaseStorage) -> WSGIApplication:
    """optuna-dashboard's WSGI application on `storage` (the same object the caller uses), read-only."""
    try:
        from optuna_dashboard import wsgi  # type: ignore[import-untyped]
    except ImportError as exc:
        raise DashboardUnavailableError(f"optuna-dashboard is not installed ({exc}); {INSTALL_HINT}") from exc
    app: WSGIApplication = wsgi(storage)
    return read_only(app)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections never hold up a stop


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_: Any) -> None:  # no access log
        return


class DashboardServer:
    """optuna-dashboard served by a thread of its own (a threading WSGI server from the standard library)."""

    def __init__(self, storage: BaseStorage, *, host: str = LOOPBACK, port: int = 0) -> None:
        app = dashboard_app(storage)
        self.httpd = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/dashboard"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() (or KeyboardInterrupt)."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()


def start_in_tuner(storage: BaseStorage, port: int) -> DashboardServer | None:
    """The tuner's dashboard on 127.0.0.1:`port`, started; None, with one log line, when it cannot be
    served (optuna-dashboard missing, the port taken): the tuner goes on without it."""
    try:
        server = DashboardServer(storage, host=LOOPBACK, port=port)
    except DashboardUnavailableError as exc:
        log.info("no dashboard: %s", exc)
        return None
    except OSError as exc:
        log.warning("no dashboard: cannot listen on %s:%d: %s", LOOPBACK, port, exc.strerror or exc)
        return None
    log.info("optuna-dashboard (read-only) on %s: loopback only, reached through kubectl port-forward "
             "(leptonctl tune dashboard)", server.url)  # fmt: skip
    return server.start()
