"""Every `fengqiao ... --help` a user can ask for prints its text.

argparse %-formats each help string: a bare "%" in one (e.g. "CPU% and RSS") printed the whole
argument's repr in the middle of `fengqiao bench --help`, and a "%" followed by another letter
raises instead. So every command and every action below it (bench KIND, device VERB, ...) is
formatted here, in process.
"""

import argparse

import pytest

from tools import cli


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _all_helps(parser, path):
    yield path, parser.format_help()
    for name, child in _subparsers(parser):
        yield from _all_helps(child, path + [name])


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_help_text_formats_cleanly(command):
    parser = cli.build_parser([command])
    (chosen,) = [p for name, p in _subparsers(parser) if name == command]
    helps = list(_all_helps(chosen, [command]))
    assert helps
    for path, text in helps:
        # what a stray "%" produces: the repr of argparse's own action dict
        assert "option_strings" not in text, " ".join(path)
        assert "usage: fengqiao" in text, " ".join(path)
