"""--help of every program: each option explained, real defaults, a pointer to its man page."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail.admin import cli
from mssendmail.delivery import worker
from mssendmail.smtp import smtpd
from mssendmail.submission import flags

PROGRAMS = {
    "mssendmail": "mssendmail(8)",
    "mssendmail-worker": "mssendmail-worker(8)",
    "mssendmail-queue": "mssendmail-queue(8)",
    "mssendmail-smtpd": "mssendmail-smtpd(8)",
}
PARSERS = {
    "mssendmail-worker": worker.build_parser,
    "mssendmail-queue": cli.build_parser,
    "mssendmail-smtpd": smtpd.build_parser,
}


def walk(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every action of a parser and of its subcommands, labelled 'prog [command]'."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from walk(sub, f"{name} {command}")
        else:
            yield name, action


def script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.skip(f"{path} missing: run the tests from the project's venv")
    return str(path)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_and_argument_has_a_description(name: str) -> None:
    missing = []
    for where, action in walk(PARSERS[name](), name):
        if isinstance(action, argparse._SubParsersAction):
            continue
        text = action.help
        if not text or text == argparse.SUPPRESS or "%(default)" in text:
            missing.append(f"{where}: {action.option_strings or action.dest}")
    assert not missing, "options without a one-line --help description: " + ", ".join(missing)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_subcommand_has_a_description(name: str) -> None:
    for action in PARSERS[name]()._actions:
        if isinstance(action, argparse._SubParsersAction):
            shown = {choice.dest: choice.help for choice in action._choices_actions}
            assert set(shown) == set(action.choices)
            assert all(shown.values()), shown


def help_commands() -> list[list[str]]:
    commands = [[name, "--help"] for name in PROGRAMS]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands += [["mssendmail-queue", command, "--help"] for command in sub.choices]
    return commands


@pytest.mark.parametrize("argv", help_commands(), ids=" ".join)
def test_help_shows_real_defaults_and_names_the_man_page(argv: list[str]) -> None:
    result = subprocess.run(
        [script(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    assert not re.search(r"\bNone\b", text), text
    assert "(default $MSSENDMAIL_CONFIG, then /etc/mssendmail/.env)" in " ".join(text.split())
    last = text.rstrip("\n").splitlines()[-1]
    assert re.match(rf"See .*{re.escape(PROGRAMS[argv[0]])}", last), last
    for line in text.splitlines():
        assert len(line) <= 100, line


def test_sendmail_help_lists_each_flag_with_its_meaning() -> None:
    text = flags.usage()
    for letter, (_kind, action, meaning) in flags.FLAGS.items():
        line = next(x for x in text.splitlines() if re.match(rf"  -{letter}\b", x))
        assert meaning in line
        assert line.endswith("(ignored)") == (action == flags.IGNORED), line
    for option in flags.LONG_OPTIONS:
        assert re.search(rf"^  {option}\b.*\S", text, re.M), option


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_bad_command_line_exits_64_with_one_line(name: str) -> None:
    argv = ["list", "--no-such-option"] if name == "mssendmail-queue" else ["--no-such-option"]
    result = subprocess.run([script(name), *argv], capture_output=True, text=True)
    assert result.returncode == 64
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"usage: {name}")
    assert lines[-1] == f"{name}: unrecognized arguments: --no-such-option"
    assert len(lines) <= 4
