# The provisioning console: a line-framed JSON request/response protocol on the serial console,
# driven by `fengqiao provision`. Specification: CONSOLE.md (this package implements it).
#
#     FQ1 {"id": 1, "cmd": "identify"} bad47d60\n                         request
#     FQ1 {"product": "fengqiao", ..., "id": 1, ...} c4f1fd0d\n          reply
#
# Failures it survives: line noise, boot/log output or a person typing on the same stream (no
# "FQ1 " prefix, bad CRC, bad JSON: an error reply, the console carries on), a line longer than
# the buffer (discarded to the next newline, one error reply), a request that makes a handler
# raise (an `internal` error reply, logged), a power cut during a write (identity saves are
# atomic), no heap for a request (MemoryError: no reply, the tool's retry asks again; the unit
# carries on), a cable pulled at any point (write_config and rekey carry a nonce stored with the
# identity: a repeat of one that landed is answered from what landed; a torn line fails its CRC).
# It never writes another device's identity over an existing one: factory_reset with confirmation
# comes first; rekey (a new key for the same device id) replaces it in one rename.
#
# Split for RAM: this module is what stays in the heap while a role runs: collecting bytes into
# lines. A complete line is handed to console/admin.py (framing), which imports the module of its
# command (console/query.py or console/change.py), and they import identity (and identity.write,
# selftest) as they need them; after the reply all of these are
# dropped from sys.modules again, so their objects are garbage. A request needs ~5-6 KB of heap
# while it runs (mostly the two modules' objects) and nothing after it; the qstrs of their
# names stay (qstrs are never freed), the same as when the modules were kept. By then a running
# unit's free heap is in small pieces (at most ~1 KB), so nothing a request does needs a large
# one (admin.py, identity.load). Measured (Unix port, 64-bit, code in ROMFS, qstr pool
# pre-grown): this module ~1.0 KB resident; it was 2.8 KB with the framing and the commands,
# plus 2.7 KB for identity.

import gc
import sys

from micropython import const

_MAX_LINE = const(4096)  # a config with a 2 KB CA certificate in JSON fits with room to spare


def drop():
    """Forget the modules a request (or the boot) imported, so their objects can be collected."""
    for m in "console.admin console.query console.change identity.write identity.file identity selftest".split():
        sys.modules.pop(m, None)  # (a split string: a tuple would be 128 B resident)
    # `import console.admin` also bound it here (and identity.write in identity's globals).
    for m in "admin query change".split():
        globals().pop(m, None)


class Console:
    def __init__(self, board, root=None, fw=10000, log=None, cfg=None):
        # fw: the application's version, SPEC section 3 packing (10000 = 1.0.0). cfg: the
        # identity a running unit booted with (identify and read_config answer from it while
        # nothing was written since; None on an unprovisioned unit: they read the file).
        self.board = board
        self.cfg = cfg
        self.root = root or board.flash_root
        self.fw = fw
        self.log = log  # None: quiet (stdout may be the console itself)
        self.changed = False  # an identity was written or erased since boot (reboot to apply)
        self.clock = None  # a running unit's Clock (app/runtime.py): identify reports its time
        self._buf = bytearray()
        self._skip = False  # inside an overlong line: drop bytes up to the next newline

    def poll(self):
        """Read what is waiting, answer complete lines. Never blocks, never raises.

        Bytes are moved a chunk at a time (not one append per byte): a growing bytearray is
        reallocated at each step, and on a 64 KB heap those holes are what runs out first."""
        try:
            data = self.board.console.read(256)
        except OSError:
            data = None
        if not data:
            return False
        i = 0
        n = len(data)
        while i < n:
            nl = data.find(b"\n", i)
            end = n if nl < 0 else nl
            if not self._skip and end > i:
                if len(self._buf) + end - i > _MAX_LINE:
                    self._buf = bytearray()
                    self._skip = True
                else:
                    try:
                        self._buf.extend(data[i:end])
                    except MemoryError:
                        # No room for this line now: drop it, say so, keep the unit running.
                        self._buf = bytearray()
                        self._skip = True
            if nl < 0:
                break
            line = self._buf
            if self._skip or line:
                self._skip = False
                self._buf = bytearray()
                # Collected before and after (known points): the request's modules then take
                # the lowest holes, and their garbage is gone before the role allocates again.
                gc.collect()
                try:
                    from console import admin

                    # None: the line was too long (or had no room) and is gone: a too_long reply.
                    admin.handle(self, line if line else None)
                except Exception as e:  # MemoryError importing the handler: the tool asks again
                    if self.log:
                        self.log("console: %r" % e)
                finally:
                    drop()
                    gc.collect()
            i = nl + 1
        return True


def serve(board, root=None, fw=10000):
    """Console-only loop for an unprovisioned unit (main.py may poll Console itself instead)."""
    c = Console(board, root, fw)
    while True:
        c.poll()
        board.poll()
        if hasattr(board, "idle_ms"):
            board.idle_ms(10)
