# User C module for the 32-bit Unix build (scripts/build-micropython32.sh): fqrom.map(path).
FQROM_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(FQROM_MOD_DIR)/fqrom.c
