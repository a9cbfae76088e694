# A simulated MFRC522 and one ISO 14443 A card, at the SPI level: the host board's RFID reader and
# the scripted SPI peer of the driver tests. The real drivers/mfrc522.py runs against it unchanged.
#
# Modelled: the register file (reset values of the registers the driver uses), the 64-byte FIFO,
# ComIrqReg set/clear semantics, the commands Idle / Transceive / SoftReset, StartSend, the timer
# (only when TModeReg.TAuto is set, as on the chip: after a power glitch it is not, and a
# transceive with no card never ends), the antenna switch, and a card's ISO 14443-3 state machine
# (IDLE, READY per cascade level, ACTIVE, HALT) with REQA/WUPA, ANTICOLLISION, SELECT with CRC_A
# check, cascade tag 0x88 and SAK bit 0x04 for 7- and 10-byte UIDs, and HLTA.
# Faults: lock_up() (MISO reads 0x00 and writes are ignored until the RST pin is pulsed low) and
# glitch() (registers fall back to reset values, as after a brown-out).
# Two cards in the field answer together: differing bits set ErrorReg.CollErr (present_two()).
# Not modelled: resolving that collision bit by bit (the driver reads no card then; the patrol
# member taps again alone), MIFARE authentication, the CRC coprocessor.

from drivers.mfrc522 import crc_a

_IDLE = 0
_READY = 1
_ACTIVE = 2
_HALT = 3

_SEL = (0x93, 0x95, 0x97)


class Card:
    def __init__(self, uid, sak=0x08):
        if len(uid) not in (4, 7, 10):
            raise ValueError("UID must be 4, 7 or 10 bytes")
        self.uid = bytes(uid)
        self.sak = sak
        self.state = _IDLE
        self.level = 0
        n = len(uid)
        if n == 4:
            parts = [self.uid]
        elif n == 7:
            parts = [b"\x88" + self.uid[0:3], self.uid[3:7]]
        else:
            parts = [b"\x88" + self.uid[0:3], b"\x88" + self.uid[3:6], self.uid[6:10]]
        self.parts = parts

    def _cl(self, level):
        p = self.parts[level]
        return p + bytes((p[0] ^ p[1] ^ p[2] ^ p[3],))

    def handle(self, frame, last_bits):
        """The card's answer to one frame, or None (silence)."""
        if last_bits == 7 and len(frame) == 1:
            if (frame[0] == 0x26 and self.state == _IDLE) or (frame[0] == 0x52 and self.state in (_IDLE, _HALT)):
                self.state = _READY
                self.level = 0
                return bytes((0x04 | ((len(self.parts) - 1) << 6), 0x00))
            return None
        if self.state == _READY and len(frame) == 2 and frame[0] == _SEL[self.level] and frame[1] == 0x20:
            return self._cl(self.level)
        if self.state == _READY and len(frame) == 9 and frame[0] == _SEL[self.level] and frame[1] == 0x70:
            if bytes(frame[2:7]) != self._cl(self.level) or crc_a(frame[:7]) != bytes(frame[7:9]):
                self.state = _IDLE
                return None
            if self.level + 1 < len(self.parts):
                self.level += 1
                sak = 0x04
            else:
                self.state = _ACTIVE
                sak = self.sak
            return bytes((sak,)) + crc_a(bytes((sak,)))
        if self.state == _ACTIVE and len(frame) == 4 and frame[0] == 0x50 and frame[1] == 0:
            if crc_a(frame[:2]) == bytes(frame[2:4]):
                self.state = _HALT
            return None
        # Anything unexpected sends a card back to where it sleeps (ISO 14443-3, 6.3).
        self.state = _HALT if self.state == _HALT else _IDLE
        return None


class SimMFRC522:
    def __init__(self, version=0x92, record=False):
        self.version = version
        self.card = None
        self.second = None
        self.locked = False
        self.record = record
        self.frames = []  # frames transmitted to the card (with record=True)
        self.writes = []  # (register, value) of every register write (with record=True)
        self.soft_resets = 0
        self.hard_resets = 0
        self._cs = 1
        self._rst = 1
        self.reset_registers()

    # -- faults and the field ----------------------------------------------------------------
    def reset_registers(self):
        r = bytearray(64)
        r[0x01] = 0x20  # CommandReg: receiver off
        r[0x11] = 0x3F  # ModeReg
        r[0x14] = 0x80  # TxControlReg: antenna off
        r[0x37] = self.version
        self.regs = r
        self.fifo = bytearray()
        if self.card:
            self.card.state = _IDLE

    def lock_up(self):
        self.locked = True

    def glitch(self):
        self.reset_registers()

    def present(self, uid, sak=0x08):
        self.card = Card(uid, sak) if uid else None
        self.second = None

    def present_two(self, uid_a, uid_b):
        """Two cards in the field: their anticollision answers collide (ErrorReg.CollErr)."""
        self.card = Card(uid_a)
        self.second = Card(uid_b)

    def remove(self):
        self.card = None

    # -- pins -------------------------------------------------------------------------------
    def cs(self, v):
        self._cs = v

    def rst(self, v):
        if self._rst and not v:
            # NRSTPD low: hard power-down; the chip comes back from reset values when it goes high.
            self.hard_resets += 1
            self.locked = False
            self.reset_registers()
        self._rst = v

    # -- SPI (the driver calls write_readinto on the "bus", which is this object) -----------
    def write_readinto(self, w, r):
        if self._cs:
            for i in range(len(r)):
                r[i] = 0xFF  # not selected: MISO floats high
            return
        if self.locked:
            for i in range(len(r)):
                r[i] = 0
            return
        addr = w[0]
        reg = (addr >> 1) & 0x3F
        r[0] = 0
        if addr & 0x80:
            for i in range(1, len(w)):
                r[i] = self._read(reg)
                reg = (w[i] >> 1) & 0x3F
        else:
            for i in range(1, len(w)):
                r[i] = 0
                self._write(reg, w[i])

    def _read(self, reg):
        if reg == 0x09:
            if not self.fifo:
                return 0
            b = self.fifo[0]
            self.fifo = self.fifo[1:]
            return b
        if reg == 0x0A:
            return len(self.fifo)
        return self.regs[reg]

    def _write(self, reg, val):
        regs = self.regs
        if self.record:
            self.writes.append((reg, val))
        if reg == 0x09:
            if len(self.fifo) < 64:
                self.fifo.append(val)
            else:
                regs[0x06] |= 0x10  # BufferOvfl
        elif reg == 0x0A:
            if val & 0x80:
                self.fifo = bytearray()
                regs[0x06] &= ~0x10 & 0xFF
        elif reg == 0x04:
            if val & 0x80:
                regs[0x04] |= val & 0x7F
            else:
                regs[0x04] &= ~val & 0xFF
        elif reg == 0x01:
            cmd = val & 0x0F
            if cmd == 0x0F:
                self.soft_resets += 1
                self.reset_registers()
                return
            regs[0x01] = val
        elif reg == 0x0D:
            regs[0x0D] = val & 0x7F
            if val & 0x80 and (regs[0x01] & 0x0F) == 0x0C:
                self._transceive(val & 0x07)
        elif reg == 0x37:
            return  # read-only
        else:
            regs[reg] = val

    def _transceive(self, last_bits):
        regs = self.regs
        frame = bytes(self.fifo)
        self.fifo = bytearray()
        regs[0x06] = 0
        if self.record:
            self.frames.append(frame)
        regs[0x04] |= 0x40  # TxIRq
        resp = None
        if self.card is not None and (regs[0x14] & 0x03) == 0x03:
            resp = self.card.handle(frame, last_bits)
            other = self.second.handle(frame, last_bits) if self.second is not None else None
            if resp is not None and other is not None and resp != other:
                # Both answered with different bits: the receiver sees a collision.
                regs[0x06] |= 0x08  # CollErr
                resp = bytes(a | b for a, b in zip(resp, other))
            elif resp is None:
                resp = other
        if resp is not None:
            self.fifo = bytearray(resp)
            regs[0x04] |= 0x30  # RxIRq | IdleIRq
        elif regs[0x2A] & 0x80:
            regs[0x04] |= 0x01  # TimerIRq: TAuto started the timer and nothing came back
