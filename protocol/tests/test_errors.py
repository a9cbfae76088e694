"""The exception tree: one place, documented, everything a ValueError (httpx style)."""

import inspect

from protocol import errors


def test_all_lists_exactly_the_tree_and_the_docstring_shows_it():
    classes = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, errors.FrameError)}
    assert set(errors.__all__) == classes
    for name in classes:
        cls = getattr(errors, name)
        assert issubclass(cls, ValueError)
        assert name in errors.__doc__
        assert cls.__doc__, name


def test_named_relations():
    assert issubclass(errors.NonCanonical, errors.MalformedFrame)
    for name in ("MalformedFrame", "Oversize", "UnsupportedVersion", "WrongDirection", "UnknownType", "TopicMismatch",
                 "BadMac", "BadBody", "Replay", "UnknownKey", "BadDeviceId"):
        assert getattr(errors, name).__bases__ == (errors.FrameError,)
    assert errors.FrameError.__bases__ == (ValueError,)


def test_catalogue_constants_name_their_lines():
    # Each device module raises err(_E_<TAG>) with `_E_<TAG> = const(N)`: line N of the catalogue
    # must carry that TAG, and every line must name a class of the tree.
    import os
    import re

    lines = errors._MESSAGES.split("\n")
    assert lines[-1] == ""
    tags = [line.split(" ", 2)[0] for line in lines[:-1]]
    assert len(set(tags)) == len(tags)
    for line in lines[:-1]:
        assert line.split(" ", 2)[1] in errors.__all__, line
    used = set()
    for name in ("cbor.py", "schema.py", "frame.py", "crypto.py"):
        with open(os.path.join(os.path.dirname(errors.__file__), name)) as f:
            src = f.read()
        for tag, n in re.findall(r"^_E_(\w+) = const\((\d+)\)", src, re.M):
            assert tags[int(n)] == tag, (name, tag, n)
            used.add(tag)
        for tag in re.findall(r"\berr\(_E_(\w+)", src):
            assert re.search(r"^_E_%s = const" % tag, src, re.M), (name, tag)
    assert used == set(tags), "catalogue lines nobody raises: %s" % (set(tags) - used)


def test_err_makes_the_named_exception_with_its_message():
    e = errors.err(45, (3, 1))
    assert type(e) is errors.UnknownKey and str(e) == "frame made with key id 3, not 1"
    assert type(errors.err(4)) is errors.NonCanonical and isinstance(errors.err(4), errors.MalformedFrame)


def test_spec_section_8_lists_every_message_of_the_code():
    """SPEC section 8 holds the messages: every catalogue line and every gateway raise, verbatim."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(errors.__file__))
    with open(os.path.join(root, "protocol", "SPEC.md")) as f:
        spec = f.read()
    section = spec[spec.index("## 8. Errors"):spec.index("## 9. Test vectors")]
    for i, line in enumerate(errors._MESSAGES.split("\n")[:-1]):
        tag, name, msg = line.split(" ", 2)
        assert "| %d | `%s` | `%s` | `%s` |" % (i, tag, name, msg) in section, line
    for path in ("protocol/strict.py", "gateway/registry.py", "gateway/pipeline.py"):
        with open(os.path.join(root, path)) as f:
            src = f.read()
        for name, msg in re.findall(r'raise (\w+)\("((?:[^"\\]|\\.)*)"', src):
            if name not in ("RegistryError", "ValueError"):
                assert "| `%s` | `%s` |" % (name, msg) in section, (path, name, msg)
