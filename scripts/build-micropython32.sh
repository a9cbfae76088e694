#!/usr/bin/env bash
# Build a 32-bit MicroPython Unix port (the word size of an ESP32 or RP2040) for heap figures:
#
#     scripts/build-micropython32.sh            # builds once, then prints the cached binary's path
#     fengqiao bench firmware --port32          # the same, on demand, then the bench on it
#
# Source: vendor/micropython/micropython-1.28.0-src-min.tgz (MIT, vendor/micropython/README.md).
# Output: build/micropython32/micropython (override the folder with MP32_OUT=DIR). The last line
# printed is the binary's path. A second run with the same archive, this script and the C module
# in scripts/micropython32/ prints the cached binary without building (build/micropython32/stamp).
#
# Needs gcc -m32 (Debian/Ubuntu: gcc-multilib), installed with apt-get when run as root;
# otherwise the exact command is printed and the script exits 1. About a minute on 2 cores.
#
# The build: no TLS (mbedtls is a submodule; on the boards TLS buffers are outside the GC heap
# anyway), no ffi, no btree; asyncio frozen (scripts/micropython32/manifest.py); plus the fqrom
# module (scripts/micropython32/fqrom), which maps a ROMFS image file so that the firmware's code
# runs in place from /rom as on a board (tools/bench_firmware.py); plus the patches in
# scripts/micropython32/ (bytes-find-int.patch: what the 64-bit 1.29 build accepts and the host
# board uses).
#
#     scripts/build-micropython32.sh --stamp    # print the cache key only (used by the tests)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="$REPO/vendor/micropython/micropython-1.28.0-src-min.tgz"
EXTRA="$REPO/scripts/micropython32"
OUT="${MP32_OUT:-$REPO/build/micropython32}"
JOBS="${MP32_JOBS:-2}"

stamp() {
    # what the binary is made from: the archive, this script, the manifest and the C module
    cat "$ARCHIVE" "${BASH_SOURCE[0]}" "$EXTRA/manifest.py" "$EXTRA"/*.patch "$EXTRA"/fqrom/* | sha256sum | cut -d' ' -f1
}

if [[ "${1:-}" == "--stamp" ]]; then
    stamp
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "usage: $0 [--stamp]   (output folder: MP32_OUT, default build/micropython32)" >&2
    exit 2
fi
if [[ ! -f "$ARCHIVE" ]]; then
    echo "build-micropython32: $ARCHIVE is missing (it is committed in vendor/micropython/)" >&2
    exit 1
fi

KEY="$(stamp)"
if [[ -x "$OUT/micropython" && -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$KEY" ]]; then
    echo "$OUT/micropython"
    exit 0
fi

m32_works() {
    local probe
    probe="$(mktemp -d)"
    echo 'int main(void){return sizeof(void*) == 4 ? 0 : 1;}' > "$probe/p.c"
    local ok=1
    if gcc -m32 -o "$probe/p" "$probe/p.c" >/dev/null 2>&1 && "$probe/p"; then
        ok=0
    fi
    rm -rf "$probe"
    return $ok
}

if ! m32_works; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
        echo "build-micropython32: installing gcc-multilib (32-bit libc for gcc -m32)" >&2
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-multilib >&2; then
            apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-multilib >&2
        fi
    else
        echo "build-micropython32: gcc -m32 cannot build 32-bit programs here. Run:" >&2
        echo "    sudo apt-get install -y gcc-multilib" >&2
        exit 1
    fi
    if ! m32_works; then
        echo "build-micropython32: gcc -m32 still fails after installing gcc-multilib" >&2
        exit 1
    fi
fi

SRC="$OUT/src"
rm -rf "$SRC" "$OUT/micropython" "$OUT/stamp"
mkdir -p "$SRC"
tar xzf "$ARCHIVE" -C "$SRC"
# The micropython-lib submodule is not shipped; the unix Makefile only checks that it exists.
mkdir -p "$SRC/lib/micropython-lib"
echo stub > "$SRC/lib/micropython-lib/README.md"
# Small fixes to the VM, each explained at the top of its file (scripts/micropython32/*.patch).
for p in "$EXTRA"/*.patch; do
    patch -p1 -s -d "$SRC" < "$p"
done
LOG="$OUT/build.log"
echo "build-micropython32: building in $SRC (log: $LOG)" >&2
if ! { make -C "$SRC/mpy-cross" -j"$JOBS" &&
       make -C "$SRC/ports/unix" -j"$JOBS" MICROPY_FORCE_32BIT=1 MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 \
            MICROPY_PY_SSL=0 FROZEN_MANIFEST="$EXTRA/manifest.py" USER_C_MODULES="$EXTRA"; } >"$LOG" 2>&1; then
    tail -30 "$LOG" >&2
    echo "build-micropython32: build failed (full log: $LOG)" >&2
    exit 1
fi
BIN="$SRC/ports/unix/build-standard/micropython"
if ! "$BIN" -c "import sys, fqrom, asyncio; assert sys.maxsize == 2**31 - 1" >&2; then
    echo "build-micropython32: $BIN is not a 32-bit build with fqrom and asyncio" >&2
    exit 1
fi
cp "$BIN" "$OUT/micropython"
echo "$KEY" > "$OUT/stamp"
echo "$OUT/micropython"
