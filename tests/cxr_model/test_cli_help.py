"""Every ``cxr`` flag explains itself and states its default, as torchvision's get_args_parser does.

The parser is the one ``cxr`` runs: built from the ``cxr.commands`` entry points, so a command
registered later is checked without touching this file.
"""

from __future__ import annotations

import argparse
from importlib import metadata

import pytest

from cxr_model.cli import get_args_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "cxr"):
    """(``cxr data summary``, its parser) for every command and sub-command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _in_a_required_group(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(group.required and action in group._group_actions for group in parser._mutually_exclusive_groups)


COMMANDS = list(_commands(get_args_parser()))


def test_every_registered_command_is_checked():
    registered = {entry.name for entry in metadata.entry_points(group="cxr.commands")}
    assert registered and {name.split()[1] for name, _ in COMMANDS} == registered
    assert "cxr data summary" in dict(COMMANDS) and "cxr keys create" in dict(COMMANDS)


@pytest.mark.parametrize("command, parser", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_argument_has_help_stating_its_default(command, parser):
    formatter = parser._get_formatter()
    for action in _arguments(parser):
        name = "/".join(action.option_strings) or action.dest
        help_text = formatter._expand_help(action) if action.help else ""
        assert help_text.strip(), f"{command} {name} has no help"
        if action.default not in (None, False):
            assert "default" in help_text and str(action.default) in help_text, (
                f"{command} {name}: help does not state the default {action.default!r}: {help_text!r}"
            )
        elif action.option_strings and not action.required and not _in_a_required_group(parser, action):
            # No value to print, so the help must say what happens without the flag.
            assert "default" in help_text, f"{command} {name}: help does not say what the default is"


def test_building_the_command_line_loads_neither_torch_nor_ray():
    """Every `cxr` command builds the whole parser first: an operator's `cxr keys list` or a PACS
    admin's `cxr gateway status` must not wait seconds for torch or Ray to load."""
    import subprocess
    import sys

    probe = "import sys; from cxr_model.cli import get_args_parser; get_args_parser(); print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
