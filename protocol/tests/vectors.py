"""Loading protocol/vectors/*.txt on CPython (the MicroPython reader is mpy_vectors.py)."""

import json
import os

VECTORS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vectors")


def load(name):
    with open(os.path.join(VECTORS_DIR, name)) as f:
        return [json.loads(line) for line in f if line.strip() and not line.startswith("#")]


def frame_vectors():
    return load("frames_valid.txt") + load("frames_invalid.txt")


def cbor_vectors():
    return load("cbor.txt")


def registry_vectors():
    return load("registry.txt")
