"""Finding programs and free loopback ports; waiting with a timeout that says what it waited for."""

import os
import shutil
import socket
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WaitTimeout(AssertionError):
    """A wait ran out of time; the message says what it was waiting for."""


# Below Linux's ephemeral range (32768-60999 by default): a port the kernel hands out for
# bind(0) is also what it gives the next *outgoing* connection, so a broker started on it a moment
# later can find it taken by one of our own clients ("Address already in use").
_LOW, _HIGH = 20000, 32000


def free_port(host="127.0.0.1"):
    """A TCP port on loopback that nobody listens on right now (outside the ephemeral range)."""
    import random

    for _ in range(200):
        port = random.randrange(_LOW, _HIGH)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s, what, interval_s=0.02):
    """Poll predicate() until it returns a truthy value (returned) or raise WaitTimeout(what)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout("timed out after %.1fs waiting for %s" % (timeout_s, what))
        time.sleep(interval_s)


def find_program(name, extra_dirs=("/usr/sbin", "/usr/local/sbin")):
    """Absolute path of a program on PATH or in the sbin directories Debian uses for daemons."""
    path = shutil.which(name)
    if path:
        return path
    for d in extra_dirs:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None
