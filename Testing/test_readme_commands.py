"""Every ``sparseimplant`` command the README shows parses with the command line's own parser.

The commands (``sparseimplant ...``, or the module under python or torchrun) are taken from the
README's code blocks (line continuations joined, shell comments dropped) and from its inline code;
none is run. README shorthand is read as a reader would:
``...``/``…`` stands for the options of the first complete command of the same subcommand shown,
``{a,b}`` and ``a|b`` for each alternative, and inline code naming only a subcommand
(`sparseimplant generate`) for that subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from typing import Dict, List, NamedTuple, Optional

import pytest

from conftest import PROJECT_ROOT
from SparseImplantLib.cli import build_parser

README = PROJECT_ROOT / "README.md"
PLACEHOLDERS = ("...", "…")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")
# The tool, behind any VAR=value, or its module under python or torchrun.
SHELL_COMMAND = re.compile(r"\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*"
                           r"(?:sparseimplant|(?:\S*python\S*|torchrun)\s(?:[^#\n]*\s)?-m\s+SparseImplantLib\.cli)(?:\s|$)")


class Command(NamedTuple):
    line: int  # in the README, for the failure message
    text: str
    tokens: List[str]  # after "sparseimplant", shorthand not yet expanded
    inline: bool


def _tokens(text: str) -> Optional[List[str]]:
    """The arguments after ``sparseimplant``, or None for other lines (other commands, diagrams, prose)."""
    match = SHELL_COMMAND.match(text)
    return shlex.split(text[match.end():], comments=True) if match else None


def readme_commands(text: str) -> List[Command]:
    """Code-block lines first, then inline code, each with its README line number."""
    commands = []
    for block in FENCE.finditer(text):
        start = text.count("\n", 0, block.start(1)) + 1
        logical, first = "", start
        for offset, line in enumerate(block.group(1).splitlines()):
            if not logical:
                first = start + offset
            logical += line
            if logical.endswith("\\"):
                logical = logical[:-1] + " "
                continue
            tokens = _tokens(logical)
            if tokens is not None:
                commands.append(Command(first, logical.strip(), tokens, inline=False))
            logical = ""
    prose = FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)  # keeps the line numbers
    for span in INLINE.finditer(prose):
        tokens = _tokens(span.group(1).replace("\n", " "))
        if tokens is not None:
            commands.append(Command(prose.count("\n", 0, span.start()) + 1, span.group(1), tokens, inline=True))
    return commands


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def command_path(tokens: List[str]) -> List[str]:
    """The leading subcommand names of ``tokens`` (e.g. ['bench', 'generate'])."""
    path: List[str] = []
    parser = build_parser()
    for token in tokens:
        choices = subcommands(parser)
        if token not in choices:
            break
        path.append(token)
        parser = choices[token]
    return path


def expand(command: Command, complete: Dict[tuple, List[str]]) -> List[List[str]]:
    """Every argument list ``command`` stands for (see the module docstring)."""
    variants: List[List[str]] = [[]]
    for token in command.tokens:
        if token in PLACEHOLDERS:
            path = tuple(command_path(command.tokens))
            assert path in complete, f"README line {command.line}: '{token}' but no complete '{' '.join(path)}' command before it"
            options = [complete[path][len(path):]]
        elif re.fullmatch(r"\{[^{}]+\}", token):
            options = [[choice] for choice in token[1:-1].split(",")]
        elif "|" in token and not token.startswith("-"):
            options = [[choice] for choice in token.split("|")]
        else:
            options = [[token]]
        variants = [variant + option for variant in variants for option in options]
    return variants


def parse_error(arguments: List[str]) -> Optional[str]:
    """argparse's complaint about ``sparseimplant ARGUMENTS``, or None when it parses."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(arguments)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1]
    return None


def check(commands: List[Command]) -> List[str]:
    """One message per README command that does not parse (empty: all do)."""
    complete: Dict[tuple, List[str]] = {}
    for command in commands:
        if not command.inline and not any(token in PLACEHOLDERS for token in command.tokens):
            complete.setdefault(tuple(command_path(command.tokens)), command.tokens)
    problems = []
    for command in commands:
        if command.inline and command.tokens == command_path(command.tokens):
            continue  # prose naming the tool or a subcommand (each word one the parser knows)
        for arguments in expand(command, complete):
            error = parse_error(arguments)
            if error is not None:
                problems.append(f"README line {command.line}: 'sparseimplant {' '.join(arguments)}': {error}")
    return problems


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_command_list_is_found():
    block = [command for command in COMMANDS if not command.inline]
    assert len(block) >= 15
    assert {tuple(command_path(command.tokens)) for command in block} >= {
        ("generate",), ("predict",), ("evaluate",), ("train",), ("bench",)}
    assert any(command.tokens[:2] == ["generate", "…"] for command in COMMANDS if command.inline)


def test_every_readme_command_parses():
    assert check(COMMANDS) == []


@pytest.mark.parametrize("line, message", [
    ("sparseimplant generate skull.nrrd -o out/ --no-such-option   # comment", "unrecognized arguments: --no-such-option"),
    ("sparseimplant train ... --kind super_resolution \\\n    --coars-model M", "unrecognized arguments: --coars-model"),
    ("sparseimplant bench {engine,network} --sizes 64", "unrecognized arguments: --sizes 64"),
    ("sparseimplant evaluate --predictions p/", "the following arguments are required: --data"),
    ("sparseimplant nonsense", "invalid choice: 'nonsense'"),
    ("torchrun --nproc_per_node 2 -m SparseImplantLib.cli train ... --itrations 5", "unrecognized arguments: --itrations 5"),
])
def test_a_readme_command_the_parser_does_not_know_is_reported(line, message):
    readme = f"```bash\nsparseimplant train --data d -o runs/x\n{line}\n```\n"
    problems = check(readme_commands(readme))
    assert len(problems) == 1 and message in problems[0] and "README line 3" in problems[0], problems
