# The identity file written: line 1 the config as JSON, line 2 its CRC-32 (format in
# identity/__init__.py), beside the old file and renamed over it.
#
# Two writers use it: identity.write.save (the console provisions a unit: validated first), and
# a running unit whose settings a `config` downlink changed (app/runtime.py): that config was
# validated when the unit was provisioned and CRC-checked at boot, and the downlink's values are
# bounded by the codec (SPEC section 3), so it is written as it is.
#
# Heap: a running unit imports this into a heap in small pieces (measured: at 64 KB, after the
# boot, no free piece of 368 B, which importing identity/write.py as well needs for its
# constants). So this module is small (few constants, 3 globals), and the JSON line (~400 B,
# ~1.7 KB with a CA) is never in the heap in one piece: json.dump writes it to _Out in the
# small pieces it makes, and _Out keeps the CRC on the way.

import identity


class _Out(identity.io.IOBase):
    def __init__(self, f):
        self.f = f
        self.crc = 0

    def write(self, b):
        import binascii

        self.crc = binascii.crc32(b, self.crc)
        return self.f.write(b)


def write(root, cfg):
    """cfg: a config as identity.load returns it (key as bytes). OSError from the flash."""
    import binascii
    import json
    import os

    # The data directory and its parents (mkdir -p).
    cur = ""
    for part in identity.data_dir(root).split("/"):
        if not part:
            if not cur:
                cur = "/"  # an absolute path
            continue
        cur = cur.rstrip("/") + "/" + part if cur else part
        try:
            os.mkdir(cur)
        except OSError:
            pass  # there already (or the flash fails: the open below says so)
    final = identity.path(root)
    tmp = final + ".tmp"
    with open(tmp, "wb") as f:
        # {"v": 1, then cfg's items, the key as hex (tools.hostboard.encode_identity writes an
        # equivalent file).
        out = _Out(f)
        out.write(b'{"v": 1')
        for k in cfg:
            out.write(b", ")
            json.dump(k, out)
            out.write(b": ")
            if k == "key":
                out.write(b'"')
                out.write(binascii.hexlify(cfg[k]))
                out.write(b'"')
            else:
                json.dump(cfg[k], out)
        out.write(b"}")
        f.write(b"\n%08x\n" % out.crc)
        if hasattr(f, "flush"):
            f.flush()
        if hasattr(os, "fsync") and hasattr(f, "fileno"):
            os.fsync(f.fileno())
    os.rename(tmp, final)
