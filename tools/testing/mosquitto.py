"""A real Mosquitto process for tests, benchmarks and the demo, on a free loopback port.

This only runs a broker with the configuration text it is given; the project's own configuration
(TLS, per-device passwords, ACL) is written by `gateway.broker`, which uses this runner.
"""

import os
import signal
import socket
import subprocess
import time

from tools.testing.procs import find_program, free_port, wait_for


class MosquittoMissing(RuntimeError):
    """Mosquitto is not installed (`apt-get install mosquitto`; `make test` does it as root)."""


class MosquittoExited(RuntimeError):
    """Mosquitto stopped during start-up; the message carries the end of its log."""


class MosquittoProcess:
    """Start/stop/restart/reload one mosquitto with `config_text` in `workdir`.

    `config_text` may use `{port}` and `{workdir}` placeholders; `port` is chosen once, so a
    restart comes back on the same port (what a device sees after a broker restart).
    """

    def __init__(self, workdir, config_text="listener {port} 127.0.0.1\nallow_anonymous true\n", port=None):
        self.binary = find_program("mosquitto")
        if not self.binary:
            raise MosquittoMissing("mosquitto not found; install it with: apt-get install -y mosquitto")
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = port or free_port()
        self.config_text = config_text
        self.conf_path = os.path.join(self.workdir, "mosquitto.conf")
        self.log_path = os.path.join(self.workdir, "mosquitto.log")
        self.proc = None

    def write_config(self):
        text = self.config_text.format(port=self.port, workdir=self.workdir)
        with open(self.conf_path, "w") as f:
            f.write(text)

    def start(self, timeout_s=10, busy_retry_s=5.0):
        """Start and wait until it listens. A port still held for a moment (a restart on the same
        port, a client that happened to get it) is retried for `busy_retry_s`."""
        self.write_config()
        deadline = time.monotonic() + busy_retry_s
        while True:
            self._log = open(self.log_path, "ab")
            # Its own session: a Ctrl-C at the terminal reaches our process, which stops the broker
            # last, instead of killing the broker under a gateway that is still shutting down.
            self.proc = subprocess.Popen([self.binary, "-c", self.conf_path], stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_for(self._listening, timeout_s,
                         "mosquitto to listen on 127.0.0.1:%d (log: %s)" % (self.port, self.log_path))
                return self
            except MosquittoExited as exc:
                self._close_log()
                if "Address already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            except BaseException:
                self.stop()
                raise

    def _close_log(self):
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def _listening(self):
        if self.proc.poll() is not None:
            with open(self.log_path, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise MosquittoExited("mosquitto exited with %s:\n%s" % (self.proc.returncode, tail))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def reload(self):
        """SIGHUP: mosquitto re-reads password and ACL files without dropping connections."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_s=5):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        self.proc = None

    def restart(self, down_s=0.0):
        self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
