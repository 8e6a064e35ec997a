"""One HTTP server on 127.0.0.1 for the tests of real downloads (weights, datasets, the
preflight's probe): serves {URL path: bytes}, logs every request, and can drop a file halfway or
refuse HEAD as real servers do."""

import http.server
import threading


class LocalServer:
    """`files` served at `url`; `requests` / `heads`: the paths of GET / HEAD requests; `log`:
    (method, path, Range header) of every request; paths in `drop` send half their body and
    close; `head` False answers HEAD with 501."""

    def __init__(self, files: dict | None = None):
        self.files = dict(files or {})
        self.requests, self.heads, self.log = [], [], []
        self.drop, self.head = set(), True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def clear(self) -> None:
        """Forgets the requests and drops (between tests sharing one server)."""
        self.requests.clear(), self.heads.clear(), self.log.clear(), self.drop.clear()
        self.head = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _handler(server: LocalServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            data = server.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body and self.path in server.drop:  # Half the body, then the connection closes.
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
            elif body:
                self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's name)
            server.requests.append(self.path)
            server.log.append((self.command, self.path, self.headers.get("Range")))
            self._answer(body=True)

        def do_HEAD(self):  # noqa: N802
            server.heads.append(self.path)
            server.log.append((self.command, self.path, None))
            if not server.head:
                self.send_error(501)
                return
            self._answer(body=False)

        def log_message(self, *args):
            pass

    return Handler
