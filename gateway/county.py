"""A tiny county receiver: subscribe to the upstream topic, append each new envelope to a file.

    rec = CountyRecorder("127.0.0.1", port, "fq/v1/county/#", "envelopes.jsonl").start()
    rec.wait_count(100, timeout_s=30); rec.ids; rec.duplicates; rec.stop()

    python -m gateway.county --broker 127.0.0.1:1884 --topic 'fq/v1/county/#' --out envelopes.jsonl

The file is what `fengqiao verify FILE` checks: one envelope per line, in the order received. An
envelope whose id was already recorded with the same content (a redelivery after a lost PUBACK)
is counted in `duplicates` and not written again -- that is the idempotence envelope ids give a
receiver. The same id with OTHER content is never dropped: the gateway's chain was restarted or
forked (a deleted store). It is written, counted in `forks` / `fork_ids` and logged as an error, and
`fengqiao verify` reports it. A `chain_epoch` event 1 (`gateway run --new-chain`) announces a new
chain epoch: logged, listed in `epochs`, and the ids after it are a new chain, not duplicates.

A county receiver must not miss what its broker accepted while it was away: it uses a persistent
MQTT session (clean_session=False, a fixed client id) at QoS 1, so the broker queues envelopes for
it while it is disconnected (the broker needs `persistence true` to keep them across its own restart).
"""

import argparse
import json
import logging
import sys
import threading
import time

import paho.mqtt.client as mqtt

log = logging.getLogger("fengqiao.county")


class CountyRecorder:
    def __init__(self, host, port, topic, path, client_id="fq-county-recorder", dedup=True,
                 username=None, password=None, cafile=None, on_envelope=None):
        self.host, self.port, self.topic, self.path = host, int(port), topic, str(path)
        self.dedup = dedup
        self.on_envelope = on_envelope   # called with each new envelope line (e.g. to print it)
        self.ids = []            # envelope ids in the order first received
        self.duplicates = 0
        self.duplicate_ids = []  # which ids came again, in order (tells a broker redelivery from a resend)
        self.malformed = 0
        self.messages = 0
        self.forks = 0
        self.fork_ids = []       # ids received again with other content (chain restarted without an epoch)
        self.epochs = []         # (gateway id, epoch) announced by a chain_epoch event 1
        self._epoch_of = {}      # gateway id -> its current chain epoch (None before any announcement)
        self._seen = {}          # (gateway id, epoch, envelope id) -> content digest
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._file = open(self.path, "a", encoding="utf-8")
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=False, protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        if cafile:
            c.tls_set(ca_certs=cafile)
        c.reconnect_delay_set(0.1, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message

    def start(self, timeout_s=10):
        self.client.connect(self.host, self.port, keepalive=15)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError("county recorder not subscribed to %s within %.0f s" % (self.topic, timeout_s))
        return self

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()
        with self._cond:
            self._file.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("county recorder refused: %s", reason_code)
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        log.info("county recorder disconnected: %s", reason_code)

    def _on_message(self, client, userdata, msg):
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = msg.payload.decode("utf-8", "replace")
        with self._cond:
            self.messages += 1
            for line in text.split("\n"):
                if not line.strip():
                    continue
                try:
                    env = json.loads(line)
                    env_id = env.get("id")
                except (ValueError, AttributeError):
                    env, env_id = None, None
                    self.malformed += 1
                if env_id is not None and self.dedup:
                    if not self._is_new(env, env_id):
                        continue
                if env_id is not None:
                    self.ids.append(env_id)
                self._file.write(line + "\n")
                if self.on_envelope is not None:
                    self.on_envelope(line)
            self._file.flush()
            self._cond.notify_all()

    def _is_new(self, env, env_id):
        """False for a redelivery; a fork or a new epoch is new (and reported). Under self._cond."""
        from gateway.envelope import envelope_digest, epoch_start

        gw = env.get("gateway")
        epoch = epoch_start(env)
        if epoch is not None and epoch != self._epoch_of.get(gw) and (gw, epoch, env_id) not in self._seen:
            self._epoch_of[gw] = epoch
            self.epochs.append((gw, epoch))
            log.warning("gateway %s started a new chain epoch %d (gateway run --new-chain)", gw, epoch)
        key, digest = (gw, self._epoch_of.get(gw), env_id), envelope_digest(env)
        previous = self._seen.get(key)
        if previous == digest:
            self.duplicates += 1
            self.duplicate_ids.append(env_id)
            return False
        if previous is not None:
            self.forks += 1
            self.fork_ids.append(env_id)
            log.error("envelope %s received again with other content: gateway %s restarted or forked its chain"
                      " without a new epoch; recorded, `fengqiao verify` reports it", env_id, gw)
        self._seen[key] = digest
        return True

    def count(self):
        with self._cond:
            return len(self.ids)

    def wait_count(self, n, timeout_s):
        """Block until n distinct envelopes were recorded; True if in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.ids) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def _show(line):
    from gateway import envelope

    try:
        print(envelope.render(envelope.loads(line)), flush=True)
    except envelope.EnvelopeError as exc:
        print("(unreadable envelope: %s)" % exc, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gateway.county", description=__doc__.split("\n")[0])
    p.add_argument("--broker", required=True, help="HOST:PORT of the county broker")
    p.add_argument("--topic", required=True, help="upstream topic or filter, e.g. 'fq/v1/county/#'")
    p.add_argument("--out", required=True, help="file to append envelopes to (one per line)")
    p.add_argument("--client-id", default="fq-county-recorder")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--cafile")
    p.add_argument("--show", action="store_true", help="print each new envelope human-readably")
    args = p.parse_args(argv)
    host, _, port = args.broker.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rec = CountyRecorder(host or "127.0.0.1", int(port), args.topic, args.out, client_id=args.client_id,
                         username=args.username, password=args.password, cafile=args.cafile,
                         on_envelope=_show if args.show else None).start()
    print("recording %s from %s into %s (Ctrl-C to stop)" % (args.topic, args.broker, args.out), flush=True)
    try:
        while True:
            time.sleep(5)
            print("%d envelope(s), %d duplicate(s) ignored, %d FORKED id(s), %d new chain epoch(s)"
                  % (rec.count(), rec.duplicates, rec.forks, len(rec.epochs)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        rec.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
