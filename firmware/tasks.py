# Cooperative tasks: the part of asyncio the firmware uses, and nothing more.
#
#     import tasks
#     t = tasks.create_task(coro)     # scheduled; tasks.cancel(t), tasks.done(t)
#     await tasks.sleep_ms(ms)        # in a coroutine: the other tasks run meanwhile
#     tasks.run(main())               # until main() returns (its value) or raises (re-raised)
#
# Why not asyncio: the firmware only ever sleeps between polls (every socket is non-blocking and
# polled, mqtt.py; the link polls for its PUBACK instead of waiting on an Event, link.py), so an
# event loop with an I/O queue, Events, Locks and a task heap is more than it uses. The frozen
# asyncio took 4.1 KB of a 64 KB heap on the 64-bit Unix port once imported (its module, class
# and function objects and its I/O queue, on a board as well: frozen code keeps its bytecode in
# flash, not those objects); this module takes under 1 KB (measured, firmware/LINK.md "Heap
# budget").
#
# What is kept of asyncio's behaviour: tasks take turns, each running until its next await;
# sleep_ms(0) lets the others run; cancel() ends a task at its await (asyncio throws its
# CancelledError there at the task's next turn; here the coroutine is closed at once, which
# raises GeneratorExit there: finally blocks run, `except Exception` lets it pass); an
# exception that ends a task other than run()'s is printed to stderr and the task dropped
# (asyncio's "Task exception wasn't retrieved"); tasks left over when run() returns stay
# scheduled for the next run() (as in MicroPython's asyncio). A task that is due runs in the
# order tasks were created; nothing is allocated per turn but sleep_ms's iterator (see there).
#
# Only `await tasks.sleep_ms(...)` (or a coroutine awaiting it) may be awaited: the coroutines
# are driven by this loop, not by asyncio's.

import sys
import time  # (not its functions one by one: the globals table stays at 12 slots, not 17)

# const() is the compiler's: no `from micropython import const` (it would cost a global).

_MAX_IDLE_MS = const(1000)  # the loop looks again at least this often (a task created meanwhile)


_all = []  # the tasks not finished yet, in the order they were created


# A task is a list [due, coroutine, end, data]: due is the ticks_ms() at which it may run again,
# None once it has ended (no class: a class and its methods were ~0.5 KB of heap, with
# CancelledError). end(t, e), if given, is called when the coroutine returns (e None) or raises
# e (an Exception): it may put a new coroutine in t[1] and return the ms to wait before running
# it, or return None to let the task end; data is the caller's (the supervisor's restart loop,
# supervisor.py: a restart without a wrapper coroutine, whose frame was 256 B per task).
def create_task(c, end=None, data=None):
    t = [time.ticks_ms(), c, end, data]
    _all.append(t)
    return t


def cancel(t):
    """End task t now: its coroutine is closed (GeneratorExit, a BaseException, at its await:
    its finally blocks run, `except Exception` does not catch it). False if it had ended."""
    if t[0] is None:
        return False
    t[0] = None
    t[1].close()
    return True


def done(t):
    return t[0] is None


_ms = [0]  # what sleep_ms() hands the loop (see there)


def sleep_ms(ms):
    # An iterator over [ms]: `await` takes its first item at once, which hands the loop the time
    # to sleep, and the next one when the task runs again: the end of the list, the end of the
    # await. One 32-byte object of garbage per sleep: a generator would be ~100 B, and a class
    # re-armed for every sleep (asyncio's SingletonGenerator) ~1 KB of heap for good.
    _ms[0] = ms
    return iter(_ms)


def _end(t, e):
    # The task's coroutine has ended (e: None, or the Exception it raised): its end() decides.
    # An end() that raises ends the task, as a task that raises does (printed; SystemExit, e.g.
    # a reboot, goes on out of run()).
    ms = None
    try:
        if t[2]:
            ms = t[2](t, e)
        elif e is not None:
            sys.print_exception(e, sys.stderr)
    except Exception as x:  # noqa: BLE001 - as a task's own exception
        sys.print_exception(x, sys.stderr)
    finally:
        if ms is None:
            t[0] = None
    return ms


def run(main):
    """Run every task until `main` (a coroutine) has finished; its value, or what it raised
    (None if it was cancelled)."""
    m = create_task(main)
    while True:
        i = 0
        while i < len(_all):
            t = _all[i]
            if t[0] is None:  # cancelled
                _all.pop(i)
                if t is m:
                    return None
                continue
            if time.ticks_diff(t[0], time.ticks_ms()) > 0:
                i += 1
                continue
            try:
                ms = t[1].send(None)
            except StopIteration as e:  # the task returned
                if t is m:
                    t[0] = None
                    _all.pop(i)
                    return e.value
                ms = _end(t, None)
            except Exception as e:  # noqa: BLE001 - the task has ended, or its end() restarts it
                # (SystemExit and KeyboardInterrupt are not caught: they end run() as they end
                # asyncio's, e.g. board.reboot() on the host board.)
                if t is m:
                    t[0] = None
                    _all.pop(i)
                    raise
                ms = _end(t, e)
            if t[0] is None:
                _all.pop(i)
                continue
            t[0] = time.ticks_add(time.ticks_ms(), ms or 0)  # None: a bare yield, next turn
            i += 1
        # Sleep until the next task is due (none are due now: each one just ran or is waiting).
        w = _MAX_IDLE_MS
        for t in _all:
            if t[0] is not None:
                w = min(w, time.ticks_diff(t[0], time.ticks_ms()))
        if w > 0:
            time.sleep_ms(w)
