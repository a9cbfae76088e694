# Entry point on every board (and on the host board: `micropython main.py --flash DIR ...`).
# Kept tiny on purpose: a board runs main.py from source, so everything else lives in the
# compiled app/runtime.py (options, start-up, tasks: read its docstring).
import sys

# Modules frozen into the firmware (fengqiao flash --manifest) are found there; MICROPYPATH may
# omit it.
if ".frozen" not in sys.path:
    sys.path.append(".frozen")

from app.runtime import main  # noqa: E402

main()
