# MFRC522 (NXP, 13.56 MHz ISO/IEC 14443 A reader) on SPI: read the UID of one card in the field.
#
# Failures this driver survives:
# - no card, card pulled away mid-read, a bad frame: read_uid() returns None (never raises);
# - a 7- or 10-byte UID: the ISO 14443-3 cascade (SEL 0x93 / 0x95 / 0x97, cascade tag 0x88,
#   SAK bit 0x04 = "UID not complete") is followed to the end;
# - a locked-up or power-glitched reader (seen in the field: the chip stops answering or its
#   registers fall back to reset values after an ESD hit or a brown-out, and it never finds a card
#   again): every `check_every` reads, and after any transceive that never completes, the driver
#   checks VersionReg and TModeReg; if they are wrong it pulses the RST pin (when wired), soft
#   resets and re-initialises. If the chip still does not answer, read_uid() raises ReaderError
#   so the application can report it; the next call tries again.
#
# RAM: one exception class (ReaderError, the application's); "no card" is a None passed up, the
# register helpers are the only small methods, the cascade is inline in _read.
#
# Hardware is injected: `spi` has write_readinto(wbuf, rbuf) (machine.SPI does), `cs(v)` and
# `rst(v)` are callables setting the pin level (a machine.Pin's bound .value works), `sleep_ms`
# a callable (time.sleep_ms on a board). CRC_A is computed here, not by the chip's coprocessor:
# fewer SPI round trips and one less chip state machine to go wrong.
#
# Register map and command codes: MFRC522 datasheet rev. 3.9, sections 9.2 and 10.3.

from time import ticks_diff, ticks_ms

from micropython import const

_COMMAND = const(0x01)
_COM_IRQ = const(0x04)
_ERROR = const(0x06)
_FIFO_DATA = const(0x09)
_FIFO_LEVEL = const(0x0A)
_BIT_FRAMING = const(0x0D)
_MODE = const(0x11)
_TX_CONTROL = const(0x14)
_TX_ASK = const(0x15)
_T_MODE = const(0x2A)
_T_PRESCALER = const(0x2B)
_T_RELOAD_H = const(0x2C)
_T_RELOAD_L = const(0x2D)
_VERSION = const(0x37)

_CMD_IDLE = const(0x00)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_SOFT_RESET = const(0x0F)

_T_MODE_VALUE = const(0x8D)  # TAuto, prescaler hi 0x0D: ~15 ms receive timeout with the values below
_DEADLINE_MS = const(40)
_POLL_LIMIT = const(2000)  # ComIrqReg polls per transceive, at most (and _DEADLINE_MS)
_IRQ_DONE = const(0x30)  # RxIRq | IdleIRq
_IRQ_TIMER = const(0x01)
_ERR_MASK = const(0x1B)  # BufferOvfl | CollErr | ParityErr | ProtocolErr

_WUPA = const(0x52)  # wakes idle and halted cards, so a card held in the field is read each poll
_HLTA = const(0x50)
_CASCADE_TAG = const(0x88)
_SAK_INCOMPLETE = const(0x04)
# SEL of cascade level 1, 2, 3: 0x93, 0x95, 0x97 (0x93 + 2 * level).

# Versions the chip (and its common clones) report: 0x91 v1.0, 0x92 v2.0, 0x88 FM17522, 0xB2 FM17522E.
_KNOWN_VERSIONS = const(b"\x91\x92\x88\xb2")


class ReaderError(Exception):
    pass


def crc_a(data):
    """ISO/IEC 14443-3 CRC_A (preset 0x6363); returns the two bytes to append, low byte first."""
    crc = 0x6363
    for b in data:
        b ^= crc & 0xFF
        b = (b ^ (b << 4)) & 0xFF
        crc = ((crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)) & 0xFFFF
    return bytes((crc & 0xFF, crc >> 8))


class MFRC522:
    # spi, cs, rst, sleep (the injected hardware; sleep may be None); check_every; reinits (times
    # the chip was found wrong and re-initialised: a health figure); version (VersionReg read
    # last); n (reads so far); stuck (a transceive never completed); buf (2-byte SPI buffer).
    def __init__(self, spi, cs, rst=None, sleep_ms=None, check_every=8):
        self.spi = spi
        self.cs = cs
        self.rst = rst
        self.sleep = sleep_ms
        self.check_every = check_every
        self.stuck = False
        self.buf = bytearray(2)
        self.n = self.reinits = 0
        self.version = None
        cs(1)
        self.init()

    # -- registers --------------------------------------------------------------------------
    def _reg(self, reg, val=None):
        """Write `val` to register `reg`, or (val None) read it."""
        b = self.buf
        b[0] = ((reg << 1) & 0x7E) | (0x80 if val is None else 0)
        b[1] = val or 0
        self.cs(0)
        self.spi.write_readinto(b, b)
        self.cs(1)
        return b[1]

    # -- set-up and health ------------------------------------------------------------------
    def init(self):
        """Hard reset (if RST is wired), soft reset, configure timer/modulation, antenna on.
        Returns True if the chip then answers with a known version."""
        sleep = self.sleep or id  # id(): a built-in that does nothing with its argument
        if self.rst is not None:
            self.rst(0)
            sleep(1)
            self.rst(1)
            sleep(50)  # oscillator start-up (datasheet 8.8.2: ~37.74 us, generous margin)
        self._reg(_COMMAND, _CMD_SOFT_RESET)
        sleep(50)
        self._reg(_T_MODE, _T_MODE_VALUE)
        self._reg(_T_PRESCALER, 0x3E)
        self._reg(_T_RELOAD_L, 30)
        self._reg(_T_RELOAD_H, 0)
        self._reg(_TX_ASK, 0x40)  # force 100 % ASK
        self._reg(_MODE, 0x3D)  # CRC preset 0x6363 (kept for completeness; CRC is done in software)
        self._reg(_TX_CONTROL, self._reg(_TX_CONTROL) | 0x03)  # antenna drivers TX1, TX2 on
        return self.healthy()

    def healthy(self):
        v = self._reg(_VERSION)
        self.version = v
        return v in _KNOWN_VERSIONS and self._reg(_T_MODE) == _T_MODE_VALUE

    def self_check(self):
        """Version byte if the chip answers (re-initialising it if needed); raises ReaderError."""
        if not self.healthy() and not self.init():
            raise ReaderError("MFRC522 not answering (version 0x%02x)" % (self.version or 0))
        return self.version

    # -- frames -----------------------------------------------------------------------------
    def _transceive(self, data, tx_last_bits=0):
        """Send `data`, return the bytes received; None on timeout/error (no card)."""
        self._reg(_COMMAND, _CMD_IDLE)
        self._reg(_COM_IRQ, 0x7F)  # clear all interrupt request bits
        self._reg(_FIFO_LEVEL, 0x80)  # flush FIFO
        for b in data:
            self._reg(_FIFO_DATA, b)
        self._reg(_COMMAND, _CMD_TRANSCEIVE)
        self._reg(_BIT_FRAMING, 0x80 | tx_last_bits)  # StartSend
        # The chip's own timer ends a receive after ~15 ms (prescaler 0xD3E: 2 kHz, reload 30).
        # If neither data nor the timer shows up within _DEADLINE_MS (or _POLL_LIMIT polls), the
        # chip is not doing what we told it.
        t0 = ticks_ms()
        n = _POLL_LIMIT
        while True:
            irq = self._reg(_COM_IRQ)
            if irq & _IRQ_DONE:
                break
            if irq & _IRQ_TIMER:
                return None
            n -= 1
            if n <= 0 or ticks_diff(ticks_ms(), t0) > _DEADLINE_MS:
                self.stuck = True
                return None
        self._reg(_BIT_FRAMING, 0)
        if self._reg(_ERROR) & _ERR_MASK:
            return None
        level = self._reg(_FIFO_LEVEL) & 0x7F
        if level == 0 or level > 16:
            return None
        out = bytearray(level)
        for i in range(level):
            out[i] = self._reg(_FIFO_DATA)
        return out

    def _read(self):
        """The UID of the card in the field, or None."""
        atqa = self._transceive(bytes((_WUPA,)), 7)
        if atqa is None or len(atqa) != 2:
            return None
        uid = bytearray()
        for level in range(3):
            sel = 0x93 + 2 * level
            resp = self._transceive(bytes((sel, 0x20)))  # ANTICOLLISION, NVB = whole UID CLn wanted
            if resp is None or len(resp) != 5 or (resp[0] ^ resp[1] ^ resp[2] ^ resp[3]) != resp[4]:
                return None  # BCC mismatch: a second card collided or the card left
            frame = bytearray(9)
            frame[0] = sel
            frame[1] = 0x70  # SELECT, NVB = 7 bytes
            frame[2:7] = resp
            frame[7:9] = crc_a(frame[:7])
            sak = self._transceive(frame)
            if sak is None or len(sak) != 3 or crc_a(sak[:1]) != bytes(sak[1:3]):
                return None
            if sak[0] & _SAK_INCOMPLETE:
                if resp[0] != _CASCADE_TAG:
                    return None
                uid.extend(resp[1:4])
            else:
                uid.extend(resp[:4])
                break
        else:
            return None  # a fourth cascade level does not exist
        # HLTA has no answer: the "timeout" is the success case.
        halt = bytearray((_HLTA, 0))
        self._transceive(halt + crc_a(halt))
        if len(uid) not in (4, 7, 10):
            return None
        return bytes(uid)

    def read_uid(self):
        """The UID (4, 7 or 10 bytes) of the card in the field, or None. Raises ReaderError only
        when the chip is wrong and re-initialising it did not help."""
        self.n += 1
        self.stuck = False
        uid = self._read()
        if self.stuck or self.n % self.check_every == 0:
            if not self.healthy():
                self.reinits += 1
                if not self.init():
                    raise ReaderError("MFRC522 locked up; re-init failed (version 0x%02x)" % (self.version or 0))
                if uid is None:
                    uid = self._read()
        return uid
