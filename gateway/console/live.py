"""The live stream: the event log itself, pushed to every open console as server-sent events.

    hub = Hub(store)            # subscribes to the store's commits (store.subscribe)
    hub.bind(loop)              # the console's asyncio loop (done when the server starts)
    async for ev in hub.follow(last_id): ...   # events after last_id, then live ones, forever

The SSE id of a message is the event's id in the store (its position in the hash chain). A
browser that lost its connection reconnects with `Last-Event-ID`, and the hub sends every
relevant event after that id: from its ring of recent events when the ring covers it, else read
back from the store (`store.events_after`). Nothing committed can be skipped: an event is either
already in the ring when a follower looks, or committed after, and then it wakes the follower.

Only what a console shows is relayed (alarms, cancels, tamper and battery uplinks, and the
gateway's case_/device_/patrol_ events); heartbeats and check-ins are not, so the commit
callback, which runs in the gateway's pipeline thread, costs one set lookup per event and at
most one `call_soon_threadsafe` per commit that has a relevant event (none for the others).

Failure modes: the console's loop is slow or stopped -> the callback only appends to a deque
(bounded by RING) and never blocks the pipeline; a follower too far behind -> it is served
from the store, in pages of 500.
"""

import asyncio
import collections
import threading

RING = 5000
DEVICE_KINDS = frozenset(("alarm", "alarm_cancel", "tamper", "battery_low"))
GATEWAY_PREFIXES = ("case_", "device_", "patrol_")


def relevant(ev):
    if ev.source == "device":
        return ev.kind in DEVICE_KINDS
    return ev.kind.startswith(GATEWAY_PREFIXES)


def summary(ev):
    """What the browser gets for one event (names and text are looked up by the page, escaped)."""
    body = ev.body if isinstance(ev.body, dict) else {}
    return {"id": ev.event_id, "kind": ev.kind, "source": ev.source, "at": ev.received_at,
            "device": "%08x" % ev.device_id if ev.device_id is not None else None,
            "place": ev.place_id, "case_id": body.get("case_id"), "actor": ev.actor}


class Hub:
    def __init__(self, store, ring=RING):
        self.store = store
        self._pending = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._loop = None
        self._ring = collections.deque(maxlen=ring)
        self.floor = store.head()[0]   # the ring holds every relevant event after this id
        self.seen = self.floor         # id of the latest relevant event in the ring (a page's start point)
        self._cond = None
        self.closed = False
        self.generation = 0            # drop_all() ends every stream open now (they reconnect)
        self.followers = 0
        store.subscribe(self._on_commit)

    def bind(self, loop):
        self._loop = loop
        self._cond = asyncio.Condition()

    # -- the pipeline's thread ---------------------------------------------------------------------

    def _on_commit(self, events):
        if self.closed:    # the console stopped (the store has no unsubscribe)
            return
        keep = [e for e in events if relevant(e)]
        if not keep:       # heartbeats, check-ins: nothing to wake the console's loop for
            return
        with self._lock:
            self._pending.append((events[-1].event_id, keep))
            if self._scheduled or self._loop is None:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:   # the loop closed (console stopping)
            pass

    # -- the console's loop --------------------------------------------------------------------------

    def _drain(self):
        with self._lock:
            self._scheduled = False
            batches = list(self._pending)
            self._pending.clear()
        for last, keep in batches:
            for e in keep:
                if e.event_id > self.seen:
                    if len(self._ring) == self._ring.maxlen:
                        self.floor = self._ring[0].event_id
                    self._ring.append(e)
            self.seen = max(self.seen, last)
        asyncio.ensure_future(self._notify())

    async def _notify(self):
        async with self._cond:
            self._cond.notify_all()

    async def close(self):
        self.closed = True
        if self._cond is not None:
            await self._notify()

    async def drop_all(self):
        """End every open stream (each browser reconnects with its Last-Event-ID)."""
        self.generation += 1
        await self._notify()

    def recent(self, n):
        """The last n relevant events, newest first (what the board lists under live activity)."""
        return list(self._ring)[-n:][::-1]

    def _from_ring(self, after):
        return [e for e in self._ring if e.event_id > after]

    async def follow(self, after, read_store):
        """Yield relevant events with id > after, oldest first, then live ones until close().

        `read_store(after, limit)` runs store.events_after off the loop (a thread)."""
        self.followers += 1
        gen = self.generation
        try:
            while not self.closed and gen == self.generation:
                if after < self.floor:
                    page = await read_store(after, 500)
                    page = [e for e in page if e.event_id <= self.floor]
                    for e in page:
                        if relevant(e):
                            yield e
                    after = page[-1].event_id if page else self.floor
                    continue
                batch = self._from_ring(after)
                if batch:
                    for e in batch:
                        yield e
                    after = batch[-1].event_id
                    continue
                after = max(after, self.seen)
                async with self._cond:
                    if not self.closed and gen == self.generation and not self._from_ring(after):
                        try:
                            await asyncio.wait_for(self._cond.wait(), 15.0)
                        except asyncio.TimeoutError:
                            yield None       # keep-alive for the caller to send
        finally:
            self.followers -= 1
