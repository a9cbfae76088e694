"""A small, really size-limited file system for disk-full tests: a tmpfs mounted on a directory.

    disk = SmallDisk(path, size_mb=64).mount()   # SmallDiskUnavailable if it cannot be mounted
    disk.fill()        # a ballast file takes every free byte: the next write gets ENOSPC
    disk.free_bytes()  # what statvfs says is left
    disk.unfill()      # the ballast is deleted: space is back
    disk.unmount()     # lazy (umount -l), so a process still holding a file cannot block teardown

Why a tmpfs: it is the only size-limited file system that needs nothing but mount(8), which every
Debian has, and it is the kernel's real ENOSPC path (SQLite sees SQLITE_FULL exactly as on a full
SD card or disk). It needs root (CAP_SYS_ADMIN): `make test` runs as root, so does a fresh Debian
machine set up with scripts/setup.sh. Without it (an unprivileged user, a container without
CAP_SYS_ADMIN) mount() fails and SmallDisk raises SmallDiskUnavailable, which the disk-full test
turns into a skip naming the reason; the documented alternative there is to run the same test as
root, or inside `unshare --user --map-root-user --mount` where a tmpfs mount is allowed (the whole
pytest process must then run inside that namespace: `unshare -Urm .venv/bin/python -m pytest ...`).
A loop-mounted image would need root too and a mkfs; RLIMIT_FSIZE would give EFBIG, not ENOSPC,
which is a different SQLite error path than a full disk.
"""

import errno
import os
import subprocess


class SmallDiskUnavailable(RuntimeError):
    """A size-limited tmpfs could not be mounted here (the message says why)."""


class SmallDisk:
    def __init__(self, path, size_mb=64):
        self.path = os.path.abspath(str(path))
        self.size_mb = int(size_mb)
        self.mounted = False
        self.ballast = os.path.join(self.path, ".ballast")

    def mount(self):
        os.makedirs(self.path, exist_ok=True)
        if os.listdir(self.path):
            raise SmallDiskUnavailable("%s is not empty: a tmpfs would hide its files" % self.path)
        if os.geteuid() != 0:
            raise SmallDiskUnavailable("mounting a size-limited tmpfs needs root (uid %d); run as root or under"
                                       " `unshare -Urm` (tools/testing/smalldisk.py)" % os.geteuid())
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0700" % self.size_mb, "fq-smalldisk",
                            self.path], capture_output=True, text=True)
        if r.returncode != 0:
            raise SmallDiskUnavailable("mount -t tmpfs on %s failed: %s" % (self.path, (r.stderr or r.stdout).strip()))
        self.mounted = True
        return self

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self):
        """Write a ballast file until the file system says ENOSPC; returns its size in bytes."""
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096, 1):   # big pieces, then up to the very last byte
                block = b"\0" * size
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def unfill(self):
        try:
            os.unlink(self.ballast)
        except FileNotFoundError:
            pass

    def unmount(self):
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False

    def __enter__(self):
        return self.mount()

    def __exit__(self, *exc):
        self.unmount()
