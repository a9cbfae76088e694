# Tiny check harness for MicroPython-side test scripts: each check prints one line
#   PASS <name>      or      FAIL <name>: <detail>
# and the script ends with "DONE <n>" so the CPython side knows it ran to the end.

_count = [0]


def check(name, ok, detail=""):
    _count[0] += 1
    if ok:
        print("PASS", name)
    else:
        print("FAIL %s: %s" % (name, detail))


def eq(name, got, want):
    check(name, got == want, "got %r, want %r" % (got, want))


def raises(name, exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        check(name, True)
        return e
    except Exception as e:  # a different exception is a failure, reported with its type
        check(name, False, "raised %r instead of %s" % (e, exc.__name__))
        return None
    check(name, False, "did not raise %s" % exc.__name__)
    return None


def done():
    print("DONE", _count[0])


class Clock:
    """A fake millisecond clock for drivers that take now_ms."""

    def __init__(self, t=1000):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t += ms


class Level:
    """A fake input pin: a callable returning the level set last."""

    def __init__(self, v=0):
        self.v = v

    def __call__(self):
        return self.v
