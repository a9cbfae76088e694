# Host stand-in for machine.WDT (only with --wdt; imported on first use). Checked from
# board.poll()/idle_ms() and by a thread, so a main loop that hangs outright is cut too. On expiry
# the process is killed the way a watchdog resets a chip (SIGKILL from a shell whose parent is
# this process), after leaving reset reason 2 (watchdog) for the next boot.

import os
import time


class SoftWatchdog:
    # path: the board's DIR/.hostboard/; timeout: ms; t: deadline (ticks_ms)
    def __init__(self, board, ms):
        self.path = board.flash_root + "/.hostboard/"
        self.timeout = ms
        self.feed()
        try:
            import _thread

            _thread.start_new_thread(self._watch, ())
        except (ImportError, OSError, RuntimeError):
            pass  # no threads: poll() still checks

    def feed(self):
        self.t = time.ticks_add(time.ticks_ms(), self.timeout)

    def poll(self):
        if time.ticks_diff(time.ticks_ms(), self.t) > 0:
            with open(self.path + "reset_reason", "w") as f:
                f.write("2")
            os.system("kill -9 $PPID")

    def _watch(self):
        while True:
            time.sleep_ms(100)
            self.poll()
