"""Structured logs: one JSON object per line, and rate limiting for things attackers control.

    setup_logging(level="info", fmt="json")          # or fmt="text" for a terminal
    log.info("stored", extra={"fields": {"events": 12, "batch_ms": 3.1}})
    limiter = RateLimitedLog(log, per_key_per_min=10)
    limiter.warning("rejected", key="BadMac", fields={"device": "0000002a", "detail": "..."})

A rejected frame is logged at most `per_key_per_min` times per minute per reason; when the
window turns over, one line says how many were suppressed. Counters (/metrics) see everything.
"""

import json
import logging
import sys
import threading
import time


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record):
        base = "%s %-7s %s: %s" % (time.strftime("%H:%M:%S", time.localtime(record.created)), record.levelname.lower(),
                                   record.name, record.getMessage())
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join("%s=%s" % kv for kv in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(level="info", fmt="json", stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("fengqiao")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return root


class RateLimitedLog:
    def __init__(self, logger, per_key_per_min=10, clock=time.monotonic):
        self.logger = logger
        self.limit = per_key_per_min
        self.clock = clock
        self._lock = threading.Lock()
        self._window = {}   # key -> [window start, logged, suppressed]

    def log(self, level, msg, key, fields=None):
        now = self.clock()
        with self._lock:
            w = self._window.get(key)
            if w is None or now - w[0] >= 60:
                suppressed = w[2] if w else 0
                w = self._window[key] = [now, 0, 0]
                if suppressed:
                    self.logger.log(level, "suppressed similar messages",
                                    extra={"fields": {"key": key, "suppressed": suppressed}})
            if w[1] >= self.limit:
                w[2] += 1
                return False
            w[1] += 1
        self.logger.log(level, msg, extra={"fields": dict(fields or {}, key=key)})
        return True

    def warning(self, msg, key, fields=None):
        return self.log(logging.WARNING, msg, key, fields)

    def info(self, msg, key, fields=None):
        return self.log(logging.INFO, msg, key, fields)
