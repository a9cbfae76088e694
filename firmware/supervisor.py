"""Health: restart failing tasks, feed the hardware watchdog only while every task is alive.

Failures it survives:
- a task raises (a bug, a driver error, MemoryError): the exception is logged with its task name
  and the task is started again after `restart_delay_ms`; restarts are counted. A MemoryError is
  met with gc.collect() first, so the log line itself can allocate (a log that fails is skipped,
  never the restart);
- a task that keeps failing (issue 11: a link task hit MemoryError 126 times in a row, its
  stored check-ins never went out): after `max_fails` failures in a row the board reboots
  (board.reboot(): machine.reset(), or on the host board exit status 3 with the flash directory
  kept), like a power cut: the outbox and the sequence counter are on flash and the outbox
  resends. A run that lasted `healthy_ms` before failing starts the count again;
- a task hangs (a loop that stops yielding cannot be seen by asyncio, but one that stops making
  progress can): every task calls `alive(name)` in its loop; the watchdog is fed only when all
  tasks checked in within `stall_ms`, so a stuck task ends in a watchdog reset (a clean reboot,
  from which the outbox resends) rather than a device that looks on but does nothing;
- a board without a hardware watchdog (host board): the same accounting runs, a stalled task is
  logged, and the board's watchdog() may return None.

Log lines: "supervisor: <task> <what>" from one format string (each distinct string constant
costs heap). Private names are short and shared with other modules (each distinct name is a
qstr): seen (task -> ticks of its last check-in), _w the watchdog, _q the task last reported
stalled, _end the restart loop of the tasks (tasks.py calls it when one ends).
"""

import gc
import sys
import time

import tasks

# const() is the compiler's: no `from micropython import const` (it would cost a global).

_WATCHDOG_MS = const(8000)
_MAX_FAILS = const(5)  # failures in a row before a reboot
_HEALTHY_MS = const(60000)  # a run this long before it failed was healthy: the count restarts


class Supervisor:
    def __init__(self, board, log=print, stall_ms=30000, restart_delay_ms=1000,
                 max_fails=_MAX_FAILS, healthy_ms=_HEALTHY_MS):
        self.board = board
        self.log = log
        self.max_fails = max_fails
        self.healthy_ms = healthy_ms
        self.stall_ms = stall_ms
        self.restart_delay_ms = restart_delay_ms
        self.restarts = {}
        self.seen = {}  # watched tasks only
        self._w = None
        self._q = None
        try:
            self._w = board.watchdog(_WATCHDOG_MS)
        except (AttributeError, OSError, ValueError) as e:
            log("supervisor: %s %s" % ("watchdog", repr(e)))

    def alive(self, name):
        self.seen[name] = time.ticks_ms()

    def spawn(self, name, f, watch=True):
        """Run `f()` (a coroutine function) as a task that is restarted whenever it fails.
        watch=False for a task that cannot check in regularly (the link sleeps through backoff)
        but has a deadline on every await instead."""
        self.restarts[name] = 0
        if watch:
            self.seen[name] = time.ticks_ms()
        # The task's data: its name, f, failures in a row, when this run started. The restart
        # loop is _end, called by the task loop when f()'s coroutine ends (tasks.py).
        return tasks.create_task(f(), self._end, [name, f, 0, time.ticks_ms()])

    def _end(self, t, e):
        # Task t's coroutine returned (e None) or raised e: log and count it, reboot after
        # max_fails failures in a row, and start f() again after restart_delay_ms. (A cancelled
        # task's GeneratorExit is no Exception: it ends the task, tasks.py.)
        d = t[3]
        name = d[0]
        if type(e) is MemoryError:
            gc.collect()  # what the task held is garbage now: room for the log line
        try:
            self.log("supervisor: %s %s" % (name, "returned" if e is None else repr(e)))
            if e is not None:
                sys.print_exception(e, sys.stderr)  # stdout may be the console
        except MemoryError:
            gc.collect()  # the line is lost, the restart is not
        now = time.ticks_ms()
        if time.ticks_diff(now, d[3]) >= self.healthy_ms:
            d[2] = 0
        d[2] += 1
        self.restarts[name] += 1
        if d[2] >= self.max_fails:
            self._boot(name)
            d[2] = 0
        if name in self.seen:
            self.seen[name] = time.ticks_ms()
        d[3] = time.ticks_add(time.ticks_ms(), self.restart_delay_ms)  # when the next run starts
        try:
            t[1] = d[1]()
        except MemoryError:
            # No heap for its new coroutine: the finished one stays, and its next turn ends at
            # once (logged as "returned"), a failure counted as this one was; then again f().
            gc.collect()
        return self.restart_delay_ms

    def _boot(self, name):
        # The reboot a task failing in a row (or the watch itself) ends in. The log line may
        # meet MemoryError too: it is skipped, never the reboot.
        gc.collect()
        try:
            self.log("supervisor: %s %s" % (name, "failing: reboot"))
        except MemoryError:
            pass
        self.board.reboot()  # does not return on a board; a test's board may

    async def watch(self):
        """The watchdog task: feed only while every task checked in recently. It is the main
        task (asyncio.run ends with it), so nothing may escape it: a MemoryError here is
        collected and the check runs again 500 ms later; `max_fails` in a row reboot the board,
        as for any task (the check allocates nothing itself: keys are iterated, not items())."""
        fails = 0
        while True:
            try:
                self._check()
                fails = 0
            except MemoryError:
                fails += 1
                if fails >= self.max_fails:
                    self._boot("watch")
                    fails = 0
                gc.collect()
            await tasks.sleep_ms(500)

    def _check(self):
        now = time.ticks_ms()
        stalled = None
        seen = self.seen
        for name in seen:  # (items() would make a view and a tuple per task in the heap)
            if time.ticks_diff(now, seen[name]) > self.stall_ms:
                stalled = name
        if stalled is None:
            if self._w is not None:
                self._w.feed()
        elif stalled != self._q:
            self.log("supervisor: %s %s" % (stalled, "stalled"))
        self._q = stalled
