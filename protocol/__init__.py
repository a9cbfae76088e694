# Fengqiao wire protocol v1 (SPEC.md). On a board this package holds only the device codec:
# the files of DEVICE_FILES (copied by `fengqiao flash`, compiled by mpy-cross in tools/tests).
# The rest of protocol/ (strict decoder, vector generator, benches) is CPython-only.
try:
    import micropython  # noqa: F401 (a board needs no list of its own files: nothing to build)
except ImportError:  # CPython (tools): one string constant, so a board's heap holds no tuple
    DEVICE_FILES = tuple("__init__.py errors.py cbor.py crypto.py schema.py frame.py".split())
