"""Run a command so that nothing it starts outlives it (Linux): what `fengqiao demo` runs under.

    status = supervise([sys.executable, "-m", "tools.cli", "demo", ...])

Failure modes this answers, each seen or possible with the demo (a gateway, two Mosquittos and a
dozen host boards, each started in its own session so a terminal's Ctrl-C does not kill a
broker under a gateway that is still shutting down):

  - Ctrl-C, SIGTERM, SIGHUP (terminal closed): the worker gets the signal and stops its children
    in its own `finally`; this process only waits for it.
  - the worker's stdout breaks (`make demo | tee` and tee exits, or `| head`): the worker stops
    as for a signal (tools/demo.py Narrator). This process writes nothing to stdout; a SIGPIPE
    that reaches it (its stderr broken, or `kill -PIPE`) is forwarded to the worker like the
    signals above, so this process never dies of it and the demo still stops everything.
  - the worker is killed with SIGKILL, or dies of a bug before its `finally`: this process is the
    worker's *child subreaper* (prctl PR_SET_CHILD_SUBREAPER), so the worker's orphaned children
    (brokers, host boards) become our children, and we stop them (SIGTERM, then SIGKILL).
  - this process is killed with SIGKILL: the worker was started with PR_SET_PDEATHSIG = SIGTERM,
    so the kernel sends it SIGTERM and it stops its children as for any SIGTERM.

What is not covered: SIGKILL of this process and of the worker at the same moment (e.g.
`kill -9 -- -PGID`); children then keep running until killed by hand.

Without prctl (not Linux) the command runs without the subreaper and death-signal parts.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option, value):
    """prctl(2); False when the platform has none."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return libc.prctl(option, value, 0, 0, 0) == 0


def _die_with_parent(parent_pid):
    def preexec():
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


def children_of(pid):
    """Pids whose parent is `pid` (from /proc/*/stat)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(name))
    return out


def _reap():
    """Collect every exited child (orphans adopted as subreaper included)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_children(grace_s=5.0, log=None):
    """SIGTERM every remaining child of this process, wait up to grace_s, then SIGKILL; repeated
    while new orphans arrive (a killed child's own children are adopted next). Returns the pids."""
    stopped = []
    for _round in range(5):
        _reap()
        pids = children_of(os.getpid())
        if not pids:
            break
        if log:
            log("stopping %d process(es) left behind: %s" % (len(pids), " ".join(map(str, pids))))
        stopped += pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap()
            if not set(pids) & set(children_of(os.getpid())):
                break
            time.sleep(0.05)
        for pid in set(pids) & set(children_of(os.getpid())):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _reap()
    return stopped


def supervise(argv, env=None, grace_s=5.0):
    """Run argv to its end with the guarantees above; its exit status (128+N if killed by N)."""
    def log(text):
        try:
            sys.stderr.write("fengqiao supervisor: %s\n" % text)
            sys.stderr.flush()
        except OSError:
            pass

    subreaper = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    worker = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent(os.getpid()) if subreaper else None)

    def forward(signum, _frame):
        try:
            worker.send_signal(signum)
        except ProcessLookupError:
            pass

    # Forwarded (a terminal's Ctrl-C reaches the worker too: it acts on the first one only).
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                status = worker.wait()
                break
            except InterruptedError:
                continue
        if status < 0:
            log("the worker was killed by signal %d" % -status)
        if subreaper:
            stop_children(grace_s, log)
        return 128 - status if status < 0 else status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
