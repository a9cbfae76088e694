"""`fengqiao demo` stops every process it started, however it is ended (issue 16).

Each test starts the real demo (both Mosquittos, the gateway, two host boards; no story) under
its supervisor, ends it one way, and checks that no process whose command line names its work
directory is left: the brokers' configs, the boards' flash dirs and the worker all live there.
"""

import os
import signal
import subprocess
import sys

import pytest

from tools.supervisor import children_of
from tools.testing.procs import REPO_ROOT, wait_for


def _leftovers(workdir):
    out = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if int(p) != os.getpid()]


@pytest.fixture
def demo(tmp_path):
    """Start the demo; yields (process, workdir, stderr reader). Killed and closed at the end."""
    workdir = tmp_path / "demo"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "demo", "--no-story", "--boards", "2",
                                 "--workdir", str(workdir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err)
    proc.err = lambda: err_path.read_text(errors="replace")
    try:
        yield proc, workdir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not proc.stdout.closed:
            proc.stdout.close()


def _read_until(proc, marker):
    seen = []
    for line in proc.stdout:
        seen.append(line.decode(errors="replace"))
        if marker in seen[-1]:
            return "".join(seen)
    raise AssertionError("demo ended before %r; stdout:\n%s\nstderr:\n%s" % (marker, "".join(seen), proc.err()))


def _assert_clean(workdir, timeout_s=20):
    wait_for(lambda: not _leftovers(workdir), timeout_s, "every process of the demo in %s to stop (left: %s)"
             % (workdir, _leftovers(workdir)))


@pytest.mark.timeout(90)
def test_reader_that_exits_early_stops_the_demo_and_every_child(demo):
    """`fengqiao demo | head`: the reader goes away while the demo runs; the demo notices (a
    failed write, or POLLERR on its idle stdout), stops everything and exits 141 (SIGPIPE)."""
    proc, workdir = demo
    _read_until(proc, "duty view")
    assert len(_leftovers(workdir)) >= 5  # worker, 2 brokers, 2 boards are running
    proc.stdout.close()                   # the reader exits
    assert proc.wait(60) == 141, proc.err()
    assert _leftovers(workdir) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGHUP, 129),
                                        (signal.SIGPIPE, 141)])
def test_a_signal_to_the_demo_stops_every_child(demo, sig, status):
    proc, workdir = demo
    _read_until(proc, "duty view")
    proc.send_signal(sig)  # to the supervisor (the process the user started), forwarded to the worker
    out = proc.stdout.read().decode(errors="replace")
    assert proc.wait(60) == status, out + proc.err()
    if sig != signal.SIGPIPE:  # a SIGPIPE'd worker cannot tell its stdout reader it stops
        assert "stopping boards, gateway and brokers" in out
    assert _leftovers(workdir) == []


@pytest.mark.timeout(90)
def test_kill_9_of_the_worker_leaves_nothing_behind(demo):
    """The worker dies without its `finally`: the supervisor, subreaper of its children, stops them."""
    proc, workdir = demo
    _read_until(proc, "duty view")
    (worker,) = children_of(proc.pid)
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(60) == 128 + signal.SIGKILL
    assert "left behind" in proc.err()
    assert _leftovers(workdir) == []


@pytest.mark.timeout(90)
def test_kill_9_of_the_supervisor_still_cleans_up(demo):
    """The supervisor dies: the kernel sends the worker SIGTERM (PR_SET_PDEATHSIG), which stops all."""
    proc, workdir = demo
    _read_until(proc, "duty view")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    _assert_clean(workdir)


@pytest.mark.timeout(90)
def test_sigpipe_to_the_worker_stops_every_child(demo):
    """SIGPIPE (what a write to a pipe without a reader raises in a process that does not ignore
    it) stops the demo like the other signals, with status 141."""
    proc, workdir = demo
    _read_until(proc, "duty view")
    (worker,) = children_of(proc.pid)
    os.kill(worker, signal.SIGPIPE)
    proc.stdout.read()
    assert proc.wait(60) == 128 + signal.SIGPIPE, proc.err()
    assert _leftovers(workdir) == []


def _shell(tmp_path, pipeline):
    """`fengqiao demo --no-story --boards 2 --workdir W | <pipeline>` in bash (pipefail), in a session
    of its own as a terminal's foreground job would be; returns (process, workdir)."""
    workdir = tmp_path / "demo"
    demo_cmd = "%s -m tools.cli demo --no-story --boards 2 --workdir %s" % (sys.executable, workdir)
    proc = subprocess.Popen(["bash", "-c", "set -o pipefail; %s | %s" % (demo_cmd, pipeline)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    return proc, workdir


@pytest.mark.timeout(120)
def test_demo_piped_into_head_that_exits_early(tmp_path):
    """`fengqiao demo | head -n 5`: head exits in the middle of the set-up (after the line saying the
    gateway runs: the county broker and the gateway with its broker are up); the demo's next write
    fails, and it stops what it had started, with status 141."""
    proc, workdir = _shell(tmp_path, "head -n 5 > /dev/null")
    try:
        _out, err = proc.communicate(timeout=90)
        assert proc.returncode == 128 + signal.SIGPIPE, err.decode(errors="replace")
        assert (workdir / "county-broker").is_dir() and (workdir / "gateway" / "broker").is_dir()  # were started
        _assert_clean(workdir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_ctrl_c_with_the_output_through_tee(tmp_path):
    """The issue's case: `make demo | tee demo.log`, then Ctrl-C (SIGINT to the whole foreground
    job: shell, demo and tee at once). tee is gone before the demo has said it is stopping; every
    child is stopped all the same."""
    log = tmp_path / "demo.log"
    proc, workdir = _shell(tmp_path, "tee %s > /dev/null" % log)
    try:
        wait_for(lambda: "duty view" in (log.read_text(errors="replace") if log.exists() else ""), 60,
                 "the duty view in %s" % log)
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
        _assert_clean(workdir)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
