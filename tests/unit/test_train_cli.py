"""retina-train's options say what they do and what they default to (workstation side)."""
import argparse

import pytest

pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
pytestmark = pytest.mark.torch

from training.cli import build_parser  # noqa: E402


def verbs():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices.items())


def test_there_are_verbs_to_check():
    assert {"split", "teacher", "distil", "evaluate", "export"} <= set(name for name, _ in verbs())


@pytest.mark.parametrize("verb", [name for name, _ in verbs()])
def test_every_option_has_help_and_shows_its_default(verb, capsys):
    parser = dict(verbs())[verb]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, "retina-train {} {} has no help".format(verb, name)
        if action.required or action.default is None or isinstance(action, argparse._StoreTrueAction):
            assert "required" in action.help or "default" in action.help or action.const is True, \
                "retina-train {} {}: say it is required or what it defaults to".format(verb, name)
        else:
            assert "%(default)s" in action.help, "retina-train {} {} hides its default {!r}".format(
                verb, name, action.default)
    with pytest.raises(SystemExit):
        build_parser().parse_args([verb, "--help"])
    out = capsys.readouterr().out
    assert "%(default)" not in out  # formatted, not printed raw
