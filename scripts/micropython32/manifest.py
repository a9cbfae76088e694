# Frozen into the 32-bit Unix build (scripts/build-micropython32.sh): asyncio only, as the
# firmware needs it and a board's firmware freezes it (the PyPI 64-bit build freezes it too).
include("$(MPY_DIR)/extmod/asyncio")
