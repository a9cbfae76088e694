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
_CONTROL = const(0x0C)
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
_IRQ_DONE = const(0x30)  # RxIRq | IdleIRq
_IRQ_TIMER = const(0x01)
_ERR_MASK = const(0x1B)  # BufferOvfl | CollErr | ParityErr | ProtocolErr

_WUPA = const(0x52)  # wakes idle and halted cards, so a card held in the field is read each poll
_HLTA = const(0x50)
_CASCADE_TAG = const(0x88)
_SAK_INCOMPLETE = const(0x04)
_SEL = (0x93, 0x95, 0x97)

# Versions the chip (and its common clones) report: 0x91 v1.0, 0x92 v2.0, 0x88 FM17522, 0xB2 FM17522E.
KNOWN_VERSIONS = (0x91, 0x92, 0x88, 0xB2)


class ReaderError(Exception):
    pass


class _NoCard(Exception):
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
    def __init__(self, spi, cs, rst=None, sleep_ms=None, check_every=8, poll_limit=2000):
        self.spi = spi
        self.cs = cs
        self.rst = rst
        self._sleep = sleep_ms or (lambda ms: None)
        self.check_every = check_every
        self.poll_limit = poll_limit  # ComIrqReg polls per transceive, at most (and _DEADLINE_MS)
        self._stuck = False
        self._w = bytearray(2)
        self._r = bytearray(2)
        self._reads = 0
        self.reinits = 0  # times the chip was found wrong and re-initialised (health figure)
        self.version = None
        cs(1)
        self.init()

    # -- registers --------------------------------------------------------------------------
    def _wreg(self, reg, val):
        self._w[0] = (reg << 1) & 0x7E
        self._w[1] = val
        self.cs(0)
        self.spi.write_readinto(self._w, self._r)
        self.cs(1)

    def _rreg(self, reg):
        self._w[0] = ((reg << 1) & 0x7E) | 0x80
        self._w[1] = 0
        self.cs(0)
        self.spi.write_readinto(self._w, self._r)
        self.cs(1)
        return self._r[1]

    def _set_bits(self, reg, mask):
        self._wreg(reg, self._rreg(reg) | mask)

    # -- set-up and health ------------------------------------------------------------------
    def init(self):
        """Hard reset (if RST is wired), soft reset, configure timer/modulation, antenna on.
        Returns True if the chip then answers with a known version."""
        if self.rst is not None:
            self.rst(0)
            self._sleep(1)
            self.rst(1)
            self._sleep(50)  # oscillator start-up (datasheet 8.8.2: ~37.74 us, generous margin)
        self._wreg(_COMMAND, _CMD_SOFT_RESET)
        self._sleep(50)
        self._wreg(_T_MODE, _T_MODE_VALUE)
        self._wreg(_T_PRESCALER, 0x3E)
        self._wreg(_T_RELOAD_L, 30)
        self._wreg(_T_RELOAD_H, 0)
        self._wreg(_TX_ASK, 0x40)  # force 100 % ASK
        self._wreg(_MODE, 0x3D)  # CRC preset 0x6363 (kept for completeness; CRC is done in software)
        self._set_bits(_TX_CONTROL, 0x03)  # antenna drivers TX1, TX2 on
        return self.healthy()

    def healthy(self):
        v = self._rreg(_VERSION)
        self.version = v
        return v in KNOWN_VERSIONS and self._rreg(_T_MODE) == _T_MODE_VALUE

    def self_check(self):
        """Version byte if the chip answers (re-initialising it if needed); raises ReaderError."""
        if not self.healthy() and not self.init():
            raise ReaderError("MFRC522 not answering (version 0x%02x)" % (self.version or 0))
        return self.version

    # -- frames -----------------------------------------------------------------------------
    def _transceive(self, data, tx_last_bits=0):
        """Send `data`, return the bytes received; _NoCard on timeout/error."""
        self._wreg(_COMMAND, _CMD_IDLE)
        self._wreg(_COM_IRQ, 0x7F)  # clear all interrupt request bits
        self._wreg(_FIFO_LEVEL, 0x80)  # flush FIFO
        for b in data:
            self._wreg(_FIFO_DATA, b)
        self._wreg(_COMMAND, _CMD_TRANSCEIVE)
        self._wreg(_BIT_FRAMING, 0x80 | tx_last_bits)  # StartSend
        # The chip's own timer ends a receive after ~15 ms (prescaler 0xD3E: 2 kHz, reload 30).
        # If neither data nor the timer shows up within _DEADLINE_MS (or poll_limit polls), the
        # chip is not doing what we told it.
        t0 = ticks_ms()
        n = self.poll_limit
        while True:
            irq = self._rreg(_COM_IRQ)
            if irq & _IRQ_DONE:
                break
            if irq & _IRQ_TIMER:
                raise _NoCard()
            n -= 1
            if n <= 0 or ticks_diff(ticks_ms(), t0) > _DEADLINE_MS:
                self._stuck = True
                raise _NoCard()
        self._wreg(_BIT_FRAMING, 0)
        if self._rreg(_ERROR) & _ERR_MASK:
            raise _NoCard()
        level = self._rreg(_FIFO_LEVEL) & 0x7F
        if level == 0 or level > 16:
            raise _NoCard()
        out = bytearray(level)
        for i in range(level):
            out[i] = self._rreg(_FIFO_DATA)
        return out

    def _select_level(self, level):
        sel = _SEL[level]
        resp = self._transceive(bytes((sel, 0x20)))  # ANTICOLLISION, NVB = whole UID CLn wanted
        if len(resp) != 5 or (resp[0] ^ resp[1] ^ resp[2] ^ resp[3]) != resp[4]:
            raise _NoCard()  # BCC mismatch: a second card collided or the card left
        frame = bytearray(9)
        frame[0] = sel
        frame[1] = 0x70  # SELECT, NVB = 7 bytes
        frame[2:7] = resp
        frame[7:9] = crc_a(frame[:7])
        sak = self._transceive(frame)
        if len(sak) != 3 or crc_a(sak[:1]) != bytes(sak[1:3]):
            raise _NoCard()
        return resp[:4], sak[0]

    def _read(self):
        atqa = self._transceive(bytes((_WUPA,)), tx_last_bits=7)
        if len(atqa) != 2:
            raise _NoCard()
        uid = bytearray()
        for level in range(3):
            part, sak = self._select_level(level)
            if sak & _SAK_INCOMPLETE:
                if part[0] != _CASCADE_TAG:
                    raise _NoCard()
                uid.extend(part[1:])
            else:
                uid.extend(part)
                break
        else:
            raise _NoCard()  # a fourth cascade level does not exist
        halt = bytearray((_HLTA, 0))
        try:
            # HLTA has no answer: the "timeout" is the success case.
            self._transceive(halt + crc_a(halt))
        except _NoCard:
            pass
        if len(uid) not in (4, 7, 10):
            raise _NoCard()
        return bytes(uid)

    def read_uid(self):
        """The UID (4, 7 or 10 bytes) of the card in the field, or None. Raises ReaderError only
        when the chip is wrong and re-initialising it did not help."""
        self._reads += 1
        self._stuck = False
        try:
            uid = self._read()
        except _NoCard:
            uid = None
        if self._stuck or self._reads % self.check_every == 0:
            if not self.healthy():
                self.reinits += 1
                if not self.init():
                    raise ReaderError("MFRC522 locked up; re-init failed (version 0x%02x)" % (self.version or 0))
                if uid is None:
                    try:
                        uid = self._read()
                    except _NoCard:
                        uid = None
        return uid
