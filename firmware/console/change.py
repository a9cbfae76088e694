# The console's commands that write or erase the identity (CONSOLE.md): write_config, rekey and
# factory_reset. Imported by console/admin.py for a request naming one of them, dropped after
# the reply, with the identity modules it imported.
#
# Retries: write_config and rekey take a `nonce` that is stored with the identity they write,
# so a repeat of one that landed is answered from what landed (`repeat: true`), never applied
# twice or refused.

from console.admin import ConsoleError, _running, send

def _nonce(req):
    # A retry of a state-changing command carries the same nonce as the first copy: the identity
    # written keeps it, so a copy whose reply was lost (cable pulled, power cut after the rename)
    # is answered from what landed instead of being refused or applied twice.
    n = req.get("nonce")
    if n is not None and (type(n) is not str or not 0 < len(n) <= 32):
        raise ConsoleError("bad_request", "nonce must be text of 1..32 characters")
    return n


def _landed(con, n):
    # The stored identity, if it was written by a request carrying nonce n; else None.
    import identity

    if n is None or not identity.is_provisioned(con.root):
        return None
    cfg = _running(con) or identity.load(con.root)
    return cfg if cfg.get("nonce") == n else None


def write_config(con, req):
    n = _nonce(req)
    cfg = _running(con)
    if cfg is not None and (n is None or cfg.get("nonce") != n):
        # A running unit is provisioned (and not a repeat of what it booted with): refused
        # before identity is imported, whose objects a running unit's heap may not have room for.
        raise ConsoleError("already_provisioned", "this unit has an identity; factory_reset it first")
    import identity

    cfg = _landed(con, n)
    if cfg is not None:
        return {"key_fingerprint": identity.fingerprint(cfg["key"]), "repeat": True}
    if identity.is_provisioned(con.root):
        raise ConsoleError("already_provisioned", "this unit has an identity; factory_reset it first")
    from identity.write import save

    try:
        # invalid_config goes back as it is. fresh: what a factory reset cut short left in data/
        # (outbox, counters of the erased identity) goes before the new identity is written.
        fp = save(con.root, req.get("cfg"), {"nonce": n} if n else None, True)
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    return {"key_fingerprint": fp}


def rekey(con, req):
    # A new key (and key id) for the same device in one step (request fields device_id, key_id,
    # key; the rest of the identity is kept): the identity is replaced by one rename (a cable
    # pulled or a power cut at any point leaves the old identity or the new one), and data/ stays:
    # the outbox keeps its records, and the new key's sequence continues above every number the
    # old key handed out (identity.write.rekey). The unit resets after the reply: the running
    # role must not number another event under the old key.
    import identity

    n = _nonce(req)
    cfg = _landed(con, n)
    if cfg is not None:
        return {"key_fingerprint": identity.fingerprint(cfg["key"]), "repeat": True}
    reboot = getattr(con.board, "reboot", None)
    if reboot is None:
        raise ConsoleError("bad_request", "this board cannot reboot itself: factory_reset and write_config")
    from identity.write import rekey

    try:
        fp = rekey(con.root, req, n, _running(con))  # not_provisioned, invalid_config as they are
    except OSError as e:
        raise ConsoleError("storage_error", "flash write failed: %r" % e)
    con.changed = True
    send(con, {"id": req.get("id"), "ok": True, "key_fingerprint": fp, "rebooting": True})
    reboot()


def factory_reset(con, req):
    if req.get("confirm") != con.board.hardware_id():
        raise ConsoleError("confirm_required", "send confirm: <hardware id> (identify gives it) to erase this unit")
    from identity.write import factory_reset

    try:
        factory_reset(con.root)
    except OSError as e:
        raise ConsoleError("storage_error", "erase failed: %r" % e)
    con.changed = True
    return {"erased": True}
