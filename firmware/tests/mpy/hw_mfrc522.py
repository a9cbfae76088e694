# MFRC522 driver against the simulated chip + card (a scripted SPI peer modelling registers,
# FIFO, IRQ bits and the ISO 14443-3 card state machine). Run by test_hw_drivers.py.
from hw_check import check, done, eq, raises

from boards.sim_mfrc522 import SimMFRC522
from drivers.mfrc522 import MFRC522, ReaderError, crc_a


def reader(rst=True, record=True, **kw):
    chip = SimMFRC522(0x92, record=record)
    r = MFRC522(chip, chip.cs, chip.rst if rst else None, None, **kw)
    return chip, r


def sel_frame(sel, part):
    f = bytes((sel, 0x70)) + part + bytes((part[0] ^ part[1] ^ part[2] ^ part[3],))
    return f + crc_a(f)


HLTA = b"\x50\x00" + crc_a(b"\x50\x00")

# CRC_A vectors: ISO/IEC 14443-3 Annex B (0x0000 -> A0 1E, 0x1234 -> 26 CF), the HLTA frame on
# every reader trace (50 00 57 CD), and the CRC catalogue check value (CRC-16/ISO-IEC-14443-3-A).
eq("crc_a_annex_b_0000", crc_a(b"\x00\x00"), b"\xa0\x1e")
eq("crc_a_annex_b_1234", crc_a(b"\x12\x34"), b"\x26\xcf")
eq("crc_a_hlta", crc_a(b"\x50\x00"), b"\x57\xcd")
eq("crc_a_check_value", crc_a(b"123456789"), b"\x05\xbf")

# Initialisation: hard reset pulse, soft reset, timer, ASK, mode, antenna on - in that order.
chip, r = reader()
eq("init_hard_reset", chip.hard_resets, 1)
eq("init_register_sequence", chip.writes,
   [(0x01, 0x0F), (0x2A, 0x8D), (0x2B, 0x3E), (0x2D, 30), (0x2C, 0), (0x15, 0x40), (0x11, 0x3D), (0x14, 0x83)])
eq("init_version", r.version, 0x92)

# No card: None, and WUPA was the only frame sent.
chip.writes = []
eq("no_card_none", r.read_uid(), None)
eq("no_card_frames", chip.frames, [b"\x52"])

# 4-, 7- and 10-byte UIDs with the exact cascade of frames.
uid4 = b"\xde\xad\xbe\xef"
uid7 = b"\x04\xa1\xb2\xc3\xd4\xe5\xf6"
uid10 = b"\x04\x11\x22\x33\x44\x55\x66\x77\x88\x99"
for name, uid, want in (
    ("uid4", uid4, [b"\x52", b"\x93\x20", sel_frame(0x93, uid4), HLTA]),
    ("uid7", uid7, [b"\x52", b"\x93\x20", sel_frame(0x93, b"\x88" + uid7[:3]), b"\x95\x20",
                    sel_frame(0x95, uid7[3:]), HLTA]),
    ("uid10", uid10, [b"\x52", b"\x93\x20", sel_frame(0x93, b"\x88" + uid10[:3]), b"\x95\x20",
                      sel_frame(0x95, b"\x88" + uid10[3:6]), b"\x97\x20", sel_frame(0x97, uid10[6:]), HLTA]),
):
    chip, r = reader()
    chip.present(uid)
    eq(name + "_read", r.read_uid(), uid)
    eq(name + "_frames", chip.frames, want)
    eq(name + "_card_halted", chip.card.state, 3)

# A card held in the field is read again on the next poll (WUPA wakes it from HALT).
chip, r = reader(record=False)
chip.present(uid7)
eq("held_card_read_again", [r.read_uid() for _ in range(3)], [uid7, uid7, uid7])
chip.present(None)
eq("removed_card_none", r.read_uid(), None)

# A card whose anticollision answer is corrupted (BCC wrong): None, not a wrong UID.
chip, r = reader(record=False)
chip.present(uid4)
real_answer = chip.card.handle
chip.card.handle = lambda frame, bits: (b"\xde\xad\xbe\xef\x00" if len(frame) == 2 and frame[1] == 0x20
                                        else real_answer(frame, bits))
eq("bad_bcc_none", r.read_uid(), None)

# Two cards at once: the collision is reported as no card, never as a mixed-up UID; the one
# left in the field alone is read next time.
chip, r = reader(record=False)
chip.present(uid4, b"\x11\x22\x33\x44")
eq("two_cards_none", r.read_uid(), None)
chip.present(uid4)
eq("one_card_again", r.read_uid(), uid4)

# A SAK with a broken CRC: None.
chip, r = reader(record=False)
chip.present(uid4)
real = chip.card.handle


def bad_sak(frame, bits):
    resp = real(frame, bits)
    if resp is not None and len(resp) == 3:
        return resp[:1] + b"\x00\x00"
    return resp


chip.card.handle = bad_sak
eq("bad_sak_crc_none", r.read_uid(), None)

# Lock-up: the chip stops answering (MISO low). With RST wired the driver notices (the transceive
# never completes), pulses RST, re-initialises, and reads the card in the same call.
chip, r = reader(record=False)
chip.present(uid10)
eq("before_lockup", r.read_uid(), uid10)
chip.locked = True  # lock-up
eq("lockup_recovered_same_call", r.read_uid(), uid10)
eq("lockup_reinit_count", (r.reinits, chip.hard_resets), (1, 2))

# Power glitch: registers back to reset values (timer off, antenna off), no RST wired: a soft
# reset is enough, found at the next periodic health check at the latest.
chip, r = reader(rst=False, record=False, check_every=4)
chip.present(uid4)
eq("before_glitch", r.read_uid(), uid4)
chip.glitch()
got = [r.read_uid() for _ in range(4)]
check("glitch_recovered_within_check_every", got[-1] == uid4 and r.reinits == 1, "%r reinits=%d" % (got, r.reinits))

# Lock-up without RST: soft reset cannot reach the chip -> ReaderError (never a silent None forever).
chip, r = reader(rst=False, record=False)
chip.locked = True  # lock-up
raises("lockup_no_rst_raises", ReaderError, r.read_uid)
raises("self_check_raises", ReaderError, r.self_check)
chip.locked = False  # the fault clears (someone power-cycled the reader)
eq("after_fault_cleared", r.self_check(), 0x92)

# Unknown version byte (nothing on the bus: MISO floats high -> 0xFF) -> not healthy.
chip = SimMFRC522(0xFF)
r = MFRC522(chip, chip.cs, None, None)
check("absent_chip_unhealthy", not r.healthy())
done()
