"""Run an ASGI app on uvicorn in a thread of the gateway process (the console, /metrics).

    server = WebServer(app, "127.0.0.1", 8470, certfile=None, keyfile=None).start()   # .port, .loop
    server.call(coro_fn)       # run a coroutine on the server's loop from another thread
    server.stop()

The socket is bound in start() (errors such as "address in use" come out there, and port 0
gives a free port at once); uvicorn serves it from its own asyncio loop in a daemon thread.
"""

import asyncio
import logging
import socket
import threading

import uvicorn

log = logging.getLogger("fengqiao.console")


class WebServer:
    def __init__(self, app, host="127.0.0.1", port=0, certfile=None, keyfile=None, name="web", on_loop=None):
        self.app = app
        self.host, self.port = host, port
        self.certfile, self.keyfile = certfile, keyfile
        self.name = name
        self.on_loop = on_loop         # fn(loop), called in the server thread before serving
        self.loop = None
        self._server = None
        self._thread = None
        self._sock = None

    def start(self, timeout_s=10):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                ssl_certfile=self.certfile, ssl_keyfile=self.keyfile, timeout_graceful_shutdown=2,
                                ws="none", loop="asyncio", http="h11")
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            if self.on_loop:
                self.on_loop(loop)
            ready.set()
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fengqiao-" + self.name, daemon=True)
        self._thread.start()
        ready.wait(timeout_s)
        for _ in range(int(timeout_s / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("%s server did not start on %s:%d" % (self.name, self.host, self.port))
        return self

    def call(self, coro_fn, timeout_s=5):
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), self.loop)
        return fut.result(timeout_s)

    def stop(self):
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread:
            self._thread.join(10)
        if self._sock:
            self._sock.close()
        self._server = None
