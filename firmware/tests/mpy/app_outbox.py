# Outbox and sequence counter checks, run on the MicroPython VM (argv[1] = scratch directory).
import os
import sys

from app_harness import check, eq, run_all

import outbox
from outbox import Outbox, OutboxFull, PRIO_ALARM, PRIO_HEARTBEAT, PRIO_NORMAL
from seqcounter import SeqCounter

ROOT = sys.argv[1]
D = None


def fresh(name):
    global D
    D = ROOT + "/" + name
    os.mkdir(D)


def data(seq):
    return b"event-%d-" % seq + bytes([seq & 0xFF]) * (seq % 7)


def size(path):
    return os.stat(path)[6]


def test_put_read_remove_survive_reopen():
    ob = Outbox(D)
    for s in (1, 2, 5, 9):
        ob.put(s, PRIO_NORMAL, data(s))
    check(ob.remove(2), "remove 2")
    check(not ob.remove(2), "second remove is a no-op")
    ob = Outbox(D)
    eq(list(ob.seqs()), [1, 5, 9], "seqs after reopen")
    for s in (1, 5, 9):
        eq(ob.read(s), (PRIO_NORMAL, data(s)), "read %d" % s)
    eq(ob.next_after(1), 5, "next_after")
    eq(ob.next_after(9), None, "next_after last")


def test_torn_tail_at_every_byte_is_skipped_never_misread():
    ob = Outbox(D)
    for s in range(1, 4):
        ob.put(s, PRIO_ALARM, data(s))
    with open(ob.path, "rb") as f:
        full = f.read()
    ob.put(4, PRIO_ALARM, data(4))
    with open(ob.path, "rb") as f:
        longer = f.read()
    for cut in range(len(full), len(longer)):
        with open(ob.path, "wb") as f:
            f.write(longer[:cut])
        got = Outbox(D)
        eq(list(got.seqs()), [1, 2, 3], "cut at %d" % cut)
        for s in (1, 2, 3):
            eq(got.read(s)[1], data(s), "data after cut %d" % cut)
        # The damaged tail was compacted away: appends go on cleanly.
        got.put(10, PRIO_ALARM, b"x")
        eq(list(Outbox(D).seqs()), [1, 2, 3, 10], "append after torn tail")


def test_corrupt_middle_record_is_skipped_others_kept():
    ob = Outbox(D)
    for s in range(1, 6):
        ob.put(s, PRIO_NORMAL, data(s))
    with open(ob.path, "rb") as f:
        raw = bytearray(f.read())
    # Flip one byte inside the data of the third record.
    off = raw.find(b"event-3-")
    raw[off + 2] ^= 0x40
    with open(ob.path, "wb") as f:
        f.write(raw)
    got = Outbox(D)
    eq(list(got.seqs()), [1, 2, 4, 5], "corrupt record skipped")
    eq(got.damaged, 1, "damage counted")
    for s in (1, 2, 4, 5):
        eq(got.read(s)[1], data(s), "data %d" % s)


def test_garbage_file_gives_empty_outbox():
    with open(D + "/outbox.log", "wb") as f:
        f.write(b"\xfa" * 50 + os.urandom(300))
    ob = Outbox(D)
    eq(len(ob), 0, "no records from garbage")
    ob.put(1, PRIO_ALARM, b"a")
    eq(list(Outbox(D).seqs()), [1], "usable after garbage")


def test_full_drops_oldest_heartbeat_first_never_alarm():
    ob = Outbox(D, max_entries=4, max_bytes=4096)
    ob.put(1, PRIO_HEARTBEAT, b"h1")
    ob.put(2, PRIO_ALARM, b"a2")
    ob.put(3, PRIO_NORMAL, b"c3")
    ob.put(4, PRIO_HEARTBEAT, b"h4")
    eq(ob.put(5, PRIO_ALARM, b"a5"), [1], "alarm evicts oldest heartbeat")
    eq(ob.put(6, PRIO_NORMAL, b"c6"), [4], "checkin evicts heartbeat")
    eq(ob.put(7, PRIO_ALARM, b"a7"), [3], "then oldest non-alarm")
    try:
        ob.put(8, PRIO_HEARTBEAT, b"h8")
        check(False, "heartbeat must not evict a check-in")
    except OutboxFull:
        pass
    eq(ob.put(9, PRIO_ALARM, b"a9"), [6], "alarm evicts last non-alarm")
    try:
        ob.put(10, PRIO_ALARM, b"a10")
        check(False, "full of alarms must refuse")
    except OutboxFull:
        pass
    eq(list(Outbox(D, max_entries=4).seqs()), [2, 5, 7, 9], "only alarms survive, persisted")
    eq(ob.dropped, 4, "dropped count")


def test_byte_bound():
    ob = Outbox(D, max_entries=100, max_bytes=200)
    for s in range(1, 20):
        ob.put(s, PRIO_HEARTBEAT, b"x" * 30)
    check(ob.live_bytes <= 200, "live bytes bounded: %d" % ob.live_bytes)
    eq(list(ob.seqs())[-1], 19, "newest heartbeat kept")


def test_compaction_bounds_file_and_keeps_order():
    ob = Outbox(D, compact_bytes=512)
    peak = 0
    for s in range(1, 400):
        ob.put(s, PRIO_NORMAL, data(s))
        if s % 3:
            ob.remove(s)
        over = size(ob.path) - ob.live_bytes - max(512, ob.live_bytes)
        peak = max(peak, over)
    check(ob.compactions > 0, "compacted")
    check(peak <= 64, "file <= live + max(compact_bytes, live) (+1 record): over by %d" % peak)
    want = [s for s in range(1, 400) if s % 3 == 0]
    eq(list(ob.seqs()), want, "live after compaction")
    again = Outbox(D, compact_bytes=512)
    eq(list(again.seqs()), want, "live after reopen")
    for s in want[:5] + want[-5:]:
        eq(again.read(s)[1], data(s), "data %d" % s)


def test_crash_during_compaction_incomplete_new_ignored():
    ob = Outbox(D)
    ob.put(1, PRIO_ALARM, b"one")
    with open(D + "/outbox.new", "wb") as f:
        f.write(outbox._enc(0x45, b"\x00\x00\x00\x07\x02junk"))  # no commit record
    eq(list(Outbox(D).seqs()), [1], "incomplete .new ignored")
    check("outbox.new" not in os.listdir(D), ".new removed")


def test_crash_between_remove_and_rename_adopts_complete_new():
    ob = Outbox(D)
    ob.put(1, PRIO_ALARM, b"one")
    ob.put(2, PRIO_ALARM, b"two")
    ob.remove(1)
    ob.compact()
    os.rename(ob.path, D + "/outbox.new")  # as if power failed after remove(), before rename()
    eq(list(Outbox(D).seqs()), [2], "complete .new adopted")


def test_failed_compaction_keeps_the_index_pointing_at_the_old_file():
    ob = Outbox(D)
    for s in range(1, 8):
        ob.put(s, PRIO_NORMAL, data(s))
    ob.remove(2)
    os.mkdir(D + "/outbox.new")  # the new file cannot be created
    try:
        ob.compact()
        check(False, "compaction should have failed")
    except OSError:
        pass
    for s in (1, 3, 4, 5, 6, 7):
        eq(ob.read(s)[1], data(s), "read %d after failed compaction" % s)
    os.rmdir(D + "/outbox.new")
    ob.compact()
    eq(list(Outbox(D).seqs()), [1, 3, 4, 5, 6, 7], "compacts fine afterwards")


def test_flash_refusing_writes_is_survived():
    ob = Outbox(D)
    ob.put(1, PRIO_ALARM, b"a1")
    ob.put(2, PRIO_NORMAL, b"c2")
    os.rename(ob.path, D + "/saved")
    os.mkdir(ob.path)  # every append now fails
    try:
        ob.put(3, PRIO_ALARM, b"a3")
        check(False, "put must raise")
    except OutboxFull as e:
        check(isinstance(e.args[0], OSError), "OutboxFull carries the flash's OSError: %r" % (e,))
    check(ob.remove(2), "remove still forgets in RAM")
    eq(list(ob.seqs()), [1], "RAM index")
    os.rmdir(ob.path)
    os.rename(D + "/saved", ob.path)
    eq(list(Outbox(D).seqs()), [1, 2], "after reboot the unrecorded removal is resent once more")


def test_sizes_capped_so_u16_offsets_always_fit():
    ob = Outbox(D, max_entries=100, max_bytes=100000, compact_bytes=100000)
    eq((ob.max_bytes, ob.compact_bytes), (30720, 30720), "capped at 30 KB")
    kept = []
    for s in range(1, 600):
        ob.put(s, PRIO_NORMAL, bytes([s & 0xFF]) * 400)
        if s % 9:
            ob.remove(s)
        else:
            kept.append(s)
        check(size(ob.path) <= 0xFFFF, "file below 64 KB: %d" % size(ob.path))
    again = Outbox(D, max_entries=100, max_bytes=100000, compact_bytes=100000)
    eq(list(again.seqs()), list(ob.seqs()), "same after reopen")
    for s in again.seqs():
        eq(again.read(s)[1], bytes([s & 0xFF]) * 400, "data %d" % s)


def test_seq_never_reused_across_reopen():
    last = 0
    writes = 0
    for boot in range(5):
        sc = SeqCounter(D, key_id=1, block=8)
        for _ in range(boot * 7):
            n = sc.next()
            check(n > last, "increasing %d > %d" % (n, last))
            last = n
        writes += sc.writes
    check(writes <= 5 + (28 // 8) + 5, "few writes: %d" % writes)


def test_seq_torn_reservation_write_falls_back_to_other():
    sc = SeqCounter(D, key_id=3, block=4)
    used = [sc.next() for _ in range(8)]  # exactly two blocks: the next write reserves 9..12
    other = D + ("/seq.a", "/seq.b")[sc._w & 1]  # odd generations go to seq.a
    with open(other, "wb") as f:
        f.write(b"\x03\x00\x00")  # the write of that reservation torn by a power cut
    sc2 = SeqCounter(D, key_id=3, block=4)
    check(sc2.next() > max(used), "no reuse after torn write")


def test_seq_rotten_newest_slot_still_no_reuse():
    sc = SeqCounter(D, key_id=3, block=4)
    used = [sc.next() for _ in range(10)]
    # Tear whichever slot was written last.
    newest = D + ("/seq.b", "/seq.a")[sc._w & 1]
    with open(newest, "rb") as f:
        raw = f.read()
    with open(newest, "wb") as f:
        f.write(raw[:5])
    sc2 = SeqCounter(D, key_id=3, block=4)
    check(sc2.next() > max(used), "no reuse after torn slot")


def test_seq_new_key_starts_at_one():
    sc = SeqCounter(D, key_id=1)
    for _ in range(100):
        sc.next()
    eq(SeqCounter(D, key_id=2).next(), 1, "new key id restarts")


def test_seq_block_writes_only_once_per_block():
    sc = SeqCounter(D, key_id=1, block=64)
    for _ in range(640):
        sc.next()
    eq(sc.writes, 10, "one write per 64 plus the boot reservation")


def test_memory_error_mid_append_keeps_later_offsets_right():
    ob = Outbox(D)
    ob.put(1, PRIO_ALARM, data(1))
    real_open = open

    class HalfWrite:  # writes the first half of the record, then the heap is out
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, buf):
            self.f.write(buf[:len(buf) // 2])
            raise MemoryError

    outbox.open = lambda path, mode: HalfWrite(real_open(path, mode))
    try:
        ob.put(2, PRIO_ALARM, data(2))
        check(False, "put must raise")
    except MemoryError:
        pass
    finally:
        del outbox.open
    eq(ob.file_bytes, size(ob.path), "file size read again after the torn append")
    ob.put(3, PRIO_ALARM, data(3))
    eq(list(ob.seqs()), [1, 3], "the failed event is not indexed")
    eq((ob.read(1)[1], ob.read(3)[1]), (data(1), data(3)), "read back at the right offsets")
    again = Outbox(D)
    eq(list(again.seqs()), [1, 3], "after a reboot: the torn record skipped, never misread")
    eq(again.read(3)[1], data(3), "read back after the reboot")


run_all(globals(), setup=fresh)
