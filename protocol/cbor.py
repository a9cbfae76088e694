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


from protocol.errors import err

# Limits of the subset (SPEC section 5).
_MAX_DEPTH = const(4)
_MAX_STRING = const(64)
_MAX_ITEMS = const(16)

_NULL = const(0xF6)
_TRUE = const(0xF5)
_FALSE = const(0xF4)

# Lines of the error catalogue (protocol/errors.py) raised here.
_E_TRUNC = const(0)
_E_NOTBYTES = const(1)
_E_TRAILING = const(2)
_E_RESERVED = const(3)
_E_LONGFORM = const(4)
_E_SIMPLE = const(5)
_E_TAG = const(6)
_E_LONGSTR = const(7)
_E_DEEP = const(8)
_E_ITEMS = const(9)
_E_KEYTYPE = const(10)
_E_DUPKEY = const(11)
_E_KEYORDER = const(12)
_E_UTF8 = const(13)
_E_ENC_BIG = const(14)
_E_ENC_SMALL = const(15)
_E_ENC_BYTES = const(16)
_E_ENC_UTF8 = const(17)
_E_ENC_TEXT = const(18)
_E_ENC_DEEP = const(19)
_E_ENC_ARRAY = const(20)
_E_ENC_MAP = const(21)
_E_ENC_KEY = const(22)
_E_ENC_TYPE = const(23)


def dumps(obj):
    """Encode `obj` (within the subset) as canonical CBOR bytes; BadBody otherwise."""
    out = bytearray()
    _enc(obj, out, 1)
    return bytes(out)


def _enc(obj, out, depth):
    if obj is None:
        out.append(_NULL)
        return
    if obj is True:
        out.append(_TRUE)
        return
    if obj is False:
        out.append(_FALSE)
        return
    # Everything else is a head (major type, argument n), then the payload (if any).
    if isinstance(obj, int):
        if obj >= 0:
            major, n = 0, obj
        else:
            major, n = 1, -1 - obj
        if n >> 64:  # no big-int constant object for 2^64-1
            raise err(_E_ENC_SMALL if major else _E_ENC_BIG)
    elif isinstance(obj, (bytes, bytearray)):
        if len(obj) > _MAX_STRING:
            raise err(_E_ENC_BYTES)
        major = 2
    elif isinstance(obj, str):
        try:
            obj = obj.encode("utf-8")
        except UnicodeError:  # CPython: lone surrogates
            raise err(_E_ENC_UTF8)
        if len(obj) > _MAX_STRING:
            raise err(_E_ENC_TEXT)
        major = 3
    elif isinstance(obj, (list, tuple, dict)):
        if depth > _MAX_DEPTH:
            raise err(_E_ENC_DEEP)
        major = 5 if isinstance(obj, dict) else 4
        if len(obj) > _MAX_ITEMS:
            raise err(_E_ENC_MAP if major == 5 else _E_ENC_ARRAY)
        if major == 5:
            for k in obj:
                if k is True or k is False or not isinstance(k, int) or k < 0 or k >> 64:
                    raise err(_E_ENC_KEY)
    else:
        raise err(_E_ENC_TYPE, type(obj).__name__)
    if major > 1:
        n = len(obj)
    if n < 24:
        out.append(major << 5 | n)
    else:
        for ai in range(24, 28):  # the shortest of 1, 2, 4, 8 bytes (n < 2^64)
            size = 1 << (ai - 24)
            if n >> (size * 8) == 0:
                break
        out.append(major << 5 | ai)
        out.extend(n.to_bytes(size, "big"))
    if major == 2 or major == 3:
        out.extend(obj)
    elif major == 4:
        for x in obj:
            _enc(x, out, depth + 1)
    elif major == 5:
        for k in sorted(obj):
            _enc(k, out, depth)  # a key: an unsigned integer, checked above
            _enc(obj[k], out, depth + 1)


def loads(data):
    """Decode exactly one item filling all of `data` (bytes, bytearray or memoryview)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise err(_E_NOTBYTES)
    end = len(data)
    value, pos = _item(data, 0, end, 1)
    if pos != end:
        raise err(_E_TRAILING)
    return value


def _item(buf, pos, end, depth):
    # One item at `pos` -> (value, pos after it). depth 0: a map key (an unsigned integer).
    if pos >= end:
        raise err(_E_TRUNC)
    ib = buf[pos]
    pos += 1
    major = ib >> 5
    if depth == 0 and major:
        raise err(_E_KEYTYPE)
    if major == 7:
        if ib == _FALSE:
            return False, pos
        if ib == _TRUE:
            return True, pos
        if ib == _NULL:
            return None, pos
        raise err(_E_SIMPLE)
    if major == 6:
        raise err(_E_TAG)
    # the head's argument: in the additional info, or in the 1, 2, 4 or 8 bytes after it
    arg = ib & 31
    if arg > 27:
        raise err(_E_RESERVED)
    if arg > 23:
        n = 1 << (arg - 24)
        if pos + n > end:
            raise err(_E_TRUNC)
        arg = 0
        for i in range(pos, pos + n):
            arg = (arg << 8) | buf[i]
        pos += n
        if arg < (24 if n == 1 else 1 << (n * 4)):
            raise err(_E_LONGFORM)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major <= 3:  # byte or text string
        if arg > _MAX_STRING:
            raise err(_E_LONGSTR)
        stop = pos + arg
        if stop > end:
            raise err(_E_TRUNC)
        raw = bytes(buf[pos:stop])
        if major == 2:
            return raw, stop
        # Text: RFC 3629 well-formed UTF-8 (what CPython's strict decoder accepts), checked here
        # because MicroPython's decode() does not validate.
        i = 0
        while i < arg:
            c = raw[i]
            i += 1
            if c < 0x80:
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
                raise err(_E_UTF8)
            if i + need > arg or not lo <= raw[i] <= hi:
                raise err(_E_UTF8)
            for j in range(i + 1, i + need):
                if not 0x80 <= raw[j] <= 0xBF:
                    raise err(_E_UTF8)
            i += need
        return str(raw, "utf-8"), stop
    if depth > _MAX_DEPTH:
        raise err(_E_DEEP)
    if arg > _MAX_ITEMS:
        raise err(_E_ITEMS)
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
        key, pos = _item(buf, pos, end, 0)
        if key == prev:
            raise err(_E_DUPKEY)
        if key < prev:
            raise err(_E_KEYORDER)
        prev = key
        v, pos = _item(buf, pos, end, depth + 1)
        out[key] = v
    return out, pos
