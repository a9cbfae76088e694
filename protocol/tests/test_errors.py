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
