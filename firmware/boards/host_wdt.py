# Host stand-in for machine.WDT (only with --wdt; imported on first use). Checked from
# board.poll()/idle_ms() and by a thread, so a main loop that hangs outright is cut too. On expiry
# the process is killed the way a watchdog resets a chip (SIGKILL from a shell whose parent is
# this process), after leaving reset reason 2 (watchdog) for the next boot.

import os
import time


class SoftWatchdog:
    def __init__(self, board, timeout_ms):
        self.board = board
        self.timeout_ms = timeout_ms
        self.feed()
        try:
            import _thread

            _thread.start_new_thread(self._watch, ())
        except (ImportError, OSError, RuntimeError):
            pass  # no threads: poll() still checks

    def feed(self):
        self.deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)

    def expired(self):
        return time.ticks_diff(time.ticks_ms(), self.deadline) > 0

    def fire(self):
        self.board.write_reset_reason(2)
        os.system("kill -9 $PPID")

    def _watch(self):
        while True:
            time.sleep_ms(100)
            if self.expired():
                self.fire()
