# Tiny test runner for MicroPython-side suites: runs every test_* function of a module's globals
# and prints one "PASS name" / "FAIL name: error" line each; the CPython test parses the lines.
import sys


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def eq(got, want, what=""):
    if got != want:
        raise Fail("%s: got %r, want %r" % (what, got, want))


def run_all(g, setup=None):
    names = sorted(k for k in g if k.startswith("test_"))
    for name in names:
        try:
            if setup:
                setup(name)
            g[name]()
            print("PASS", name)
        except Exception as e:  # report every failure, keep running the others
            print("FAIL %s: %r" % (name, e))
            sys.print_exception(e)
    print("DONE", len(names))
