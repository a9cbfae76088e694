"""The CBOR subset of SPEC.md section 5: dumps/loads for the device (MicroPython) and CPython.

Only what frame bodies use: integers -2^64..2^64-1, byte strings, UTF-8 text strings, arrays
(list/tuple in, list out), maps with unsigned-integer keys (dict), false/true/null. Always the
shortest form, map keys ascending. Limits: containers nested <= 4 deep (the top-level item is
level 1), strings <= 64 bytes, arrays/maps <= 16 items/pairs.

loads() walks the bytes once and raises at the first fault in byte order:
  MalformedFrame  truncated, trailing bytes, reserved or indefinite lengths, tags, floats and
                  other simple values, invalid UTF-8, non-uint or duplicate map keys, limits;
  NonCanonical    an argument not in shortest form, or map keys in descending order.
dumps() raises BadBody for a value outside the subset or its limits (it never writes bytes that
loads() would refuse).

MicroPython notes: bool is not an int there (isinstance(True, int) is False) but it is on
CPython, so booleans are tested with `is` first everywhere. MicroPython's bytes.decode() does
not validate UTF-8, so text is checked here (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
Recursion is bounded by the depth limit (<= 5 frames of _item on the stack).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from protocol.errors import BadBody, MalformedFrame, NonCanonical

MAX_DEPTH = const(4)
MAX_STRING = const(64)
MAX_ITEMS = const(16)
_U64_MAX = const(0xFFFFFFFFFFFFFFFF)  # a constant object where it exceeds small ints

_NULL = const(0xF6)
_TRUE = const(0xF5)
_FALSE = const(0xF4)


def dumps(obj):
    """Encode `obj` (within the subset) as canonical CBOR bytes; BadBody otherwise."""
    out = bytearray()
    _enc(obj, out, 1)
    return bytes(out)


def _put_head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    else:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))


def _enc(obj, out, depth):
    if obj is None:
        out.append(_NULL)
    elif obj is True:
        out.append(_TRUE)
    elif obj is False:
        out.append(_FALSE)
    elif isinstance(obj, int):
        if obj >= 0:
            if obj > _U64_MAX:
                raise BadBody("integer above 2^64-1")
            _put_head(out, 0, obj)
        else:
            n = -1 - obj
            if n > _U64_MAX:
                raise BadBody("integer below -2^64")
            _put_head(out, 1, n)
    elif isinstance(obj, (bytes, bytearray)):
        if len(obj) > MAX_STRING:
            raise BadBody("byte string longer than 64 bytes")
        _put_head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        try:
            b = obj.encode("utf-8")
        except UnicodeError:  # CPython: lone surrogates
            raise BadBody("text not encodable as UTF-8")
        if len(b) > MAX_STRING:
            raise BadBody("text longer than 64 bytes")
        _put_head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        if depth > MAX_DEPTH:
            raise BadBody("nested deeper than 4")
        if len(obj) > MAX_ITEMS:
            raise BadBody("array longer than 16 items")
        _put_head(out, 4, len(obj))
        for x in obj:
            _enc(x, out, depth + 1)
    elif isinstance(obj, dict):
        if depth > MAX_DEPTH:
            raise BadBody("nested deeper than 4")
        if len(obj) > MAX_ITEMS:
            raise BadBody("map longer than 16 pairs")
        for k in obj:
            if k is True or k is False or not isinstance(k, int) or k < 0 or k > _U64_MAX:
                raise BadBody("map key is not an unsigned integer")
        _put_head(out, 5, len(obj))
        for k in sorted(obj):
            _put_head(out, 0, k)
            _enc(obj[k], out, depth + 1)
    else:
        raise BadBody("type %s is outside the CBOR subset" % type(obj).__name__)


def loads(data):
    """Decode exactly one item filling all of `data` (bytes, bytearray or memoryview)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedFrame("CBOR input must be bytes")
    end = len(data)
    value, pos = _item(data, 0, end, 1)
    if pos != end:
        raise MalformedFrame("trailing bytes after the CBOR item")
    return value


def _arg(buf, pos, end, ai):
    # Argument of a head whose additional info is `ai`; returns (arg, pos after it).
    if ai < 24:
        return ai, pos
    if ai > 27:
        raise MalformedFrame("reserved or indefinite length")
    n = 1 << (ai - 24)
    if pos + n > end:
        raise MalformedFrame("truncated")
    arg = 0
    for i in range(pos, pos + n):
        arg = (arg << 8) | buf[i]
    if arg < (24 if n == 1 else 1 << (n * 4)):
        raise NonCanonical("integer or length not in shortest form")
    return arg, pos + n


def _item(buf, pos, end, depth):
    if pos >= end:
        raise MalformedFrame("truncated")
    ib = buf[pos]
    pos += 1
    major = ib >> 5
    if major == 7:
        if ib == _FALSE:
            return False, pos
        if ib == _TRUE:
            return True, pos
        if ib == _NULL:
            return None, pos
        raise MalformedFrame("float, break or simple value outside the subset")
    if major == 6:
        raise MalformedFrame("tags are outside the subset")
    arg, pos = _arg(buf, pos, end, ib & 31)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major <= 3:  # byte or text string
        if arg > MAX_STRING:
            raise MalformedFrame("string longer than 64 bytes")
        stop = pos + arg
        if stop > end:
            raise MalformedFrame("truncated")
        raw = bytes(buf[pos:stop])
        if major == 3:
            _check_utf8(raw)
            raw = str(raw, "utf-8")
        return raw, stop
    if depth > MAX_DEPTH:
        raise MalformedFrame("nested deeper than 4")
    if arg > MAX_ITEMS:
        raise MalformedFrame("more than 16 items")
    if major == 4:
        out = []
        for _ in range(arg):
            v, pos = _item(buf, pos, end, depth + 1)
            out.append(v)
        return out, pos
    # major 5: map with unsigned-integer keys, strictly ascending
    out = {}
    prev = -1
    for _ in range(arg):
        if pos >= end:
            raise MalformedFrame("truncated")
        kb = buf[pos]
        if kb >> 5:
            raise MalformedFrame("map key is not an unsigned integer")
        key, pos = _arg(buf, pos + 1, end, kb & 31)
        if key == prev:
            raise MalformedFrame("duplicate map key")
        if key < prev:
            raise NonCanonical("map keys not in ascending order")
        prev = key
        v, pos = _item(buf, pos, end, depth + 1)
        out[key] = v
    return out, pos


def _check_utf8(b):
    # RFC 3629 well-formed UTF-8 (what CPython's strict decoder accepts).
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            need = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            need = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            raise MalformedFrame("invalid UTF-8 in text string")
        if i + need >= n:
            raise MalformedFrame("invalid UTF-8 in text string")
        if not lo <= b[i + 1] <= hi:
            raise MalformedFrame("invalid UTF-8 in text string")
        for j in range(i + 2, i + 1 + need):
            if not 0x80 <= b[j] <= 0xBF:
                raise MalformedFrame("invalid UTF-8 in text string")
        i += 1 + need
