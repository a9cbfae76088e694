"""The duty console: the township duty officer's web page, inside the gateway process.

    [gateway]
    plugins = ["gateway.upstream", "gateway.cases", "gateway.console"]   # the console after cases
    [console]
    host = "127.0.0.1"        # default; the township network: its address, and TLS below
    port = 8470
    # tls_cert = "console.crt"   tls_key = "console.key"
    # session_ttl_s = 43200

`attach(app)` (the gateway's plugin hook) starts a Starlette app on uvicorn in a thread of the
gateway. Why in the process and not beside it:
- the live board is pushed from the store's commit callback (`store.subscribe`): no polling, and
  an alarm is on the page a few milliseconds after its commit;
- acting on a case uses the gateway's own CaseService (one lock, one writer of effects), then
  performs the effects at once: the button's light changes without waiting for the timer tick,
  and no second process can send the same effect twice;
- supervision's state (offline, battery, tamper, last seen) is in the gateway's memory, and
  /metrics serves the gateway's Metrics object.
The price is sharing the GIL with the MQTT thread; `fengqiao bench console` measures it (gateway
throughput with and without 20 open sessions). Keys: the console opens no key file, is handed the
registry's device list (not its key API), and no route returns or shows a key.

Accounts: `fengqiao console user add NAME --role officer --person p-zhou-min --config gateway.toml`.
"""

import logging

log = logging.getLogger("fengqiao.console")

TEAM_PREFIX = "team:"    # a dispatch form's `to` naming a team, not a person

DEFAULTS = {"host": "127.0.0.1", "port": 8470, "tls_cert": None, "tls_key": None, "session_ttl_s": 12 * 3600}


class Console:
    def __init__(self, store, cases, patrol, list_devices, supervisor, clock, metrics,
                 flush=None, session_ttl_s=DEFAULTS["session_ttl_s"], tls=False, held=None):
        from gateway.console.accounts import Accounts
        from gateway.console.live import Hub
        from gateway.console.views import Views
        from gateway.village.db import open_db

        self.store, self.cases, self.patrol, self.clock, self.metrics = store, cases, patrol, clock, metrics
        self._flush = flush
        self.tls = tls
        self.accounts = Accounts(open_db(store.path), clock, session_ttl_s=session_ttl_s)
        self.views = Views(cases, patrol, list_devices, supervisor, clock, held)
        self.hub = Hub(store)
        self.server = None
        metrics.gauge_fn("fengqiao_console_streams", lambda: self.hub.followers, "duty console live streams open")
        from gateway.metrics import HELP

        HELP.setdefault("fengqiao_console_actions_total", ("counter", "Case actions taken in the duty console"))
        HELP.setdefault("fengqiao_console_logins_total", ("counter", "Duty console logins, by result"))

    def act(self, name, case_id, actor, form):
        """One officer action through the case service, then its effects at once (LED, sirens)."""
        if name == "ack":
            self.cases.acknowledge(case_id, actor, form.get("note", ""))
        elif name == "dispatch":
            to, note = form.get("to", ""), form.get("note", "")
            if to.startswith(TEAM_PREFIX):
                # a whole team: one signed dispatch step per member, each naming the team (the
                # case service dispatches to persons; the board then shows the last member)
                team = next((t for t in self.views.teams() if t["id"] == to[len(TEAM_PREFIX):]), None)
                if team is None or not team["members"]:
                    from gateway.cases.service import CaseStateError

                    raise CaseStateError("no team %r with members in the village file" % to[len(TEAM_PREFIX):])
                note = "%s: %s" % (team["name"], note) if note else team["name"]
                for person in team["members"]:
                    self.cases.dispatch(case_id, actor, person, note)
            else:
                self.cases.dispatch(case_id, actor, to, note)
        elif name == "note":
            self.cases.note(case_id, actor, form.get("note", ""))
        elif name == "close":
            from gateway.cases.service import OUTCOMES, CaseStateError

            if form.get("outcome") not in OUTCOMES:   # the page's select is required; a bare POST is refused too
                raise CaseStateError("closing a case needs an outcome: %s" % ", ".join(OUTCOMES))
            self.cases.close(case_id, actor, form.get("note", ""), form.get("outcome"))
        if self._flush is not None:
            self._flush()
        self.metrics.inc("fengqiao_console_actions_total", {"action": name})

    def start(self, host="127.0.0.1", port=0, certfile=None, keyfile=None):
        from gateway.console.app import build_app
        from gateway.console.server import WebServer

        self.server = WebServer(build_app(self), host, port, certfile, keyfile, name="console",
                                on_loop=self.hub.bind).start()
        return self

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return "%s://%s:%d/" % (scheme, self.server.host, self.server.port)

    def drop_streams(self):
        """End every open live stream now (browsers reconnect with Last-Event-ID): tests, restarts."""
        self.server.call(self.hub.drop_all)

    def stop(self):
        if self.server is not None:
            try:
                self.server.call(self.hub.close)
            except (RuntimeError, TimeoutError) as exc:   # the loop is already gone
                log.warning("console stream close: %s", exc)
            self.server.stop()
        with self.accounts._lock:
            self.accounts.db.close()


def attach(app, **overrides):
    """Gateway plugin hook: find the cases plugin loaded before us and serve the console.

    `overrides` replace [console] keys (the demo starts it on a running gateway this way)."""
    from gateway.cases.hooks import CasesPlugin

    section = dict(DEFAULTS)
    given = dict(app.config.section("console") if getattr(app, "config", None) else {}, **overrides)
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError("unknown key(s) in [console]: %s" % ", ".join(sorted(unknown)))
    section.update(given)
    plugin = next((p for p in getattr(app, "_plugins", []) if isinstance(p, CasesPlugin)), None)
    if plugin is None:
        raise ValueError("the console needs the gateway.cases plugin listed before gateway.console")
    cert = app.config.path_of(section["tls_cert"]) if section["tls_cert"] else None
    key = app.config.path_of(section["tls_key"]) if section["tls_key"] else None
    if bool(cert) != bool(key):
        raise ValueError("[console] tls_cert and tls_key go together")

    def flush():
        plugin.cases.flush(app.ctx)

    console = Console(app.store, plugin.cases, plugin.patrol, app.registry.devices, app.supervisor, app.clock, app.metrics,
                      flush=flush, session_ttl_s=int(section["session_ttl_s"]), tls=bool(cert),
                      held=getattr(app.service, "held", None))
    console.start(section["host"], int(section["port"]), cert, key)
    app.console = console
    log.info("duty console running", extra={"fields": {"url": console.url}})
    return console
