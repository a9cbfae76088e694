"""The live stream's hub without a browser: every relevant event after a given id, in order, once,
whether it comes from the ring of recent events or (older than the ring) from the store."""

import asyncio
import threading

from gateway.clock import ManualClock
from gateway.console.live import Hub, relevant
from gateway.store import EventStore


def _events(store, n):
    for i in range(n):
        store.append_gateway_event("case_opened" if i % 3 == 0 else "heartbeat_summary", {"case_id": i})


def test_follow_resumes_from_ring_and_store_without_gaps(tmp_path):
    store = EventStore(tmp_path / "gw.db", ManualClock())
    _events(store, 10)                     # before the hub: only in the store
    hub = Hub(store, ring=4)               # a tiny ring: most of the history comes from the store
    loop = asyncio.new_event_loop()
    got = []

    async def main():
        hub.bind(asyncio.get_running_loop())

        async def read_store(after, limit):
            return await asyncio.to_thread(store.events_after, after, limit)

        writer = threading.Thread(target=_events, args=(store, 30))
        writer.start()                      # commits arrive from another thread while we follow
        async for ev in hub.follow(0, read_store):
            if ev is None:
                continue
            got.append(ev.event_id)
            if ev.event_id >= 38:          # the last case_opened of the 40 events
                break
        writer.join()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
        expected = [e.event_id for e in store.events_after(0, 100) if relevant(e)]
    finally:
        loop.close()
        store.close()
    assert expected == [1, 4, 7, 10] + list(range(11, 39, 3))
    assert got == expected


def test_only_what_a_console_shows_is_relayed():
    class E:
        def __init__(self, source, kind):
            self.source, self.kind = source, kind

    assert relevant(E("device", "alarm")) and relevant(E("gateway", "case_closed"))
    assert relevant(E("gateway", "device_offline")) and relevant(E("gateway", "patrol_missed_checkpoint"))
    assert not relevant(E("device", "heartbeat")) and not relevant(E("device", "checkin"))
