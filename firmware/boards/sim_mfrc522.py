# A simulated MFRC522 and one ISO 14443 A card, at the SPI level: the host board's RFID reader and
# the scripted SPI peer of the driver tests. The real drivers/mfrc522.py runs against it unchanged.
#
# Modelled: the register file (reset values of the registers the driver uses), the 64-byte FIFO,
# ComIrqReg set/clear semantics, the commands Idle / Transceive / SoftReset, StartSend, the timer
# (only when TModeReg.TAuto is set, as on the chip: after a power glitch it is not, and a
# transceive with no card never ends), the antenna switch, and a card's ISO 14443-3 state machine
# (IDLE, READY per cascade level, ACTIVE, HALT) with REQA/WUPA, ANTICOLLISION, SELECT with CRC_A
# check, cascade tag 0x88 and SAK bit 0x04 for 7- and 10-byte UIDs, and HLTA.
# Faults: `locked = True` (a lock-up: MISO reads 0x00 and writes are ignored until the RST pin
# is pulsed low) and glitch() (registers fall back to reset values, as after a brown-out).
# Two cards in the field answer together: differing bits set ErrorReg.CollErr (present(a, b)).
#
# RAM: the check-in role carries this module on the host board, so it is compact: one method
# for the SPI transfer (register reads, writes and the transceive inline), no per-card helpers.
# Not modelled: resolving that collision bit by bit (the driver reads no card then; the patrol
# member taps again alone), MIFARE authentication, the CRC coprocessor.

from drivers.mfrc522 import crc_a

from micropython import const

_IDLE = const(0)
_READY = const(1)
_ACTIVE = const(2)
_HALT = const(3)


class Card:
    # uid; state (_IDLE.._HALT); n, the cascade level being selected; parts, the UID CLn of
    # each level (cascade tag 0x88 + 3 bytes, then the rest) with its BCC.
    def __init__(self, uid):
        if len(uid) not in (4, 7, 10):
            raise ValueError("UID must be 4, 7 or 10 bytes")
        self.uid = u = bytes(uid)
        self.state = _IDLE
        self.n = 0
        if len(u) == 4:
            parts = [u]
        elif len(u) == 7:
            parts = [b"\x88" + u[0:3], u[3:7]]
        else:
            parts = [b"\x88" + u[0:3], b"\x88" + u[3:6], u[6:10]]
        self.parts = [p + bytes((p[0] ^ p[1] ^ p[2] ^ p[3],)) for p in parts]

    def handle(self, frame, last_bits):
        """The card's answer to one frame, or None (silence)."""
        if last_bits == 7 and len(frame) == 1:
            if (frame[0] == 0x26 and self.state == _IDLE) or (frame[0] == 0x52 and self.state in (_IDLE, _HALT)):
                self.state = _READY
                self.n = 0
                return bytes((0x04 | ((len(self.parts) - 1) << 6), 0x00))
            return None
        sel = 0x93 + 2 * self.n  # SEL of cascade level 1, 2, 3: 0x93, 0x95, 0x97
        if self.state == _READY and len(frame) == 2 and frame[0] == sel and frame[1] == 0x20:
            return self.parts[self.n]
        if self.state == _READY and len(frame) == 9 and frame[0] == sel and frame[1] == 0x70:
            if bytes(frame[2:7]) != self.parts[self.n] or crc_a(frame[:7]) != bytes(frame[7:9]):
                self.state = _IDLE
                return None
            if self.n + 1 < len(self.parts):
                self.n += 1
                sak = 0x04
            else:
                self.state = _ACTIVE
                sak = 0x08  # MIFARE Classic 1K
            return bytes((sak,)) + crc_a(bytes((sak,)))
        if self.state == _ACTIVE and len(frame) == 4 and frame[0] == 0x50 and frame[1] == 0:
            if crc_a(frame[:2]) == bytes(frame[2:4]):
                self.state = _HALT
            return None
        # Anything unexpected sends a card back to where it sleeps (ISO 14443-3, 6.3).
        self.state = _HALT if self.state == _HALT else _IDLE
        return None


class SimMFRC522:
    # version (VersionReg); card, second (the cards in the field); locked (a lock-up fault);
    # record, frames, writes (with record=True: frames transmitted to the card and every
    # register write as (register, value)); hard_resets (RST pulses); regs (register file), buf
    # (the FIFO); t, s (levels of the CS and RST pins).
    def __init__(self, version=0x92, record=False):
        self.version = version
        self.card = self.second = None
        self.locked = False
        self.record = record
        self.frames = []
        self.writes = []
        self.hard_resets = 0
        self.t = self.s = 1
        self.reader = None  # the host board's driver for this chip (boards/host.py)
        self.glitch()

    # -- faults and the field ----------------------------------------------------------------
    def glitch(self):
        # Registers back to reset values (power-on, RST, soft reset, or a brown-out).
        r = bytearray(64)
        r[0x01] = 0x20  # CommandReg: receiver off
        r[0x11] = 0x3F  # ModeReg
        r[0x14] = 0x80  # TxControlReg: antenna off
        r[0x37] = self.version
        self.regs = r
        self.buf = bytearray()
        if self.card:
            self.card.state = _IDLE

    def present(self, uid, uid2=None):
        """A card enters the field (uid None or empty: the field is empty); with uid2 a second
        card at the same time: their anticollision answers collide (ErrorReg.CollErr)."""
        self.card = Card(uid) if uid else None
        self.second = Card(uid2) if uid and uid2 else None

    # -- pins -------------------------------------------------------------------------------
    def cs(self, v):
        self.t = v

    def rst(self, v):
        if self.s and not v:
            # NRSTPD low: hard power-down; the chip comes back from reset values when it goes high.
            self.hard_resets += 1
            self.locked = False
            self.glitch()
        self.s = v

    # -- SPI (the driver calls write_readinto on the "bus", which is this object) -----------
    def write_readinto(self, w, r):
        if self.t or self.locked:
            for i in range(len(r)):
                r[i] = 0xFF if self.t else 0  # not selected: MISO floats high; locked: low
            return
        # w and r may be the same buffer (machine.SPI allows it): read w[i] before writing r[i].
        regs = self.regs
        addr = w[0]
        reg = (addr >> 1) & 0x3F
        r[0] = 0
        for i in range(1, len(w)):
            val = w[i]
            if addr & 0x80:  # read
                if reg == 0x09:
                    v = 0
                    if self.buf:
                        v = self.buf[0]
                        self.buf = self.buf[1:]
                else:
                    v = len(self.buf) if reg == 0x0A else regs[reg]
                r[i] = v
                reg = (val >> 1) & 0x3F
                continue
            r[i] = 0
            if self.record:
                self.writes.append((reg, val))
            if reg == 0x09:
                if len(self.buf) < 64:
                    self.buf.append(val)
                else:
                    regs[0x06] |= 0x10  # BufferOvfl
            elif reg == 0x0A:
                if val & 0x80:
                    self.buf = bytearray()
                    regs[0x06] &= ~0x10 & 0xFF
            elif reg == 0x04:
                if val & 0x80:
                    regs[0x04] |= val & 0x7F
                else:
                    regs[0x04] &= ~val & 0xFF
            elif reg == 0x01:
                if val & 0x0F == 0x0F:  # SoftReset
                    self.glitch()
                else:
                    regs[0x01] = val
            elif reg == 0x0D:
                regs[0x0D] = val & 0x7F
                if val & 0x80 and (regs[0x01] & 0x0F) == 0x0C:
                    # StartSend with Transceive: the frame in the FIFO goes to the card(s).
                    frame = bytes(self.buf)
                    self.buf = bytearray()
                    regs[0x06] = 0
                    if self.record:
                        self.frames.append(frame)
                    regs[0x04] |= 0x40  # TxIRq
                    resp = None
                    if self.card is not None and (regs[0x14] & 0x03) == 0x03:
                        resp = self.card.handle(frame, val & 0x07)
                        other = self.second.handle(frame, val & 0x07) if self.second is not None else None
                        if resp is not None and other is not None and resp != other:
                            # Both answered with different bits: the receiver sees a collision.
                            regs[0x06] |= 0x08  # CollErr
                            resp = bytes(a | b for a, b in zip(resp, other))
                        elif resp is None:
                            resp = other
                    if resp is not None:
                        self.buf = bytearray(resp)
                        regs[0x04] |= 0x30  # RxIRq | IdleIRq
                    elif regs[0x2A] & 0x80:
                        regs[0x04] |= 0x01  # TimerIRq: TAuto started the timer and nothing came back
            elif reg != 0x37:  # VersionReg is read-only
                regs[reg] = val
