"""errors.py: the one sysexits table and the one main() wrapper every program runs in."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

from mssendmail import errors
from mssendmail.admin import cli
from mssendmail.delivery import worker
from mssendmail.smtp import smtpd

PACKAGE = Path(errors.__file__).parent
EXIT_CALLS = {"exit", "_exit", "SystemExit"}


def literal_exit_codes(tree: ast.AST) -> list[int]:
    """Line numbers of `return N`, `sys.exit(N)`, `SystemExit(N)`, `os._exit(N)` with N != 0."""
    found = []
    for node in ast.walk(tree):
        value: ast.expr | None = None
        if isinstance(node, ast.Return):
            value = node.value
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in EXIT_CALLS:
                value = node.args[0]
        if isinstance(value, ast.IfExp):  # `return 75 if paused else 0`
            values = [value.body, value.orelse]
        else:
            values = [value] if value is not None else []
        for v in values:
            if isinstance(v, ast.Constant) and type(v.value) is int and v.value != 0:
                found.append(node.lineno)
    return sorted(found)


def test_exit_codes_come_from_the_table() -> None:
    """No program returns a bare number as its exit status: 64..78 and 130 are names."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for line in literal_exit_codes(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == []


def test_the_scan_sees_a_literal_exit_code() -> None:
    code = (
        "def f(x):\n    if x:\n        return 75\n    return 1 if x else 0\nraise SystemExit(78)\n"
    )
    assert literal_exit_codes(ast.parse(code)) == [3, 4, 5]
    assert literal_exit_codes(ast.parse("def f():\n    return EX_TEMPFAIL\n")) == []


def test_run_main_error_is_one_line_and_its_code(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise errors.ConfigError("SENDER is not an address\nsecond line")

    assert errors.run_main("prog", body) == errors.EX_CONFIG
    assert capsys.readouterr().err == "prog: SENDER is not an address second line\n"


def test_run_main_maps_oserror_in_one_place(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/spool/queue/x")

    assert errors.run_main("prog", body, hint="free disk space") == errors.EX_TEMPFAIL
    assert capsys.readouterr().err == (
        "prog: No space left on device (/spool/queue/x); free disk space\n"
    )


def test_run_main_bug_is_one_line_70(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise RuntimeError("boom")

    assert errors.run_main("prog", body) == errors.EX_SOFTWARE
    assert (
        capsys.readouterr().err
        == "prog: internal error: RuntimeError: boom; please report this bug\n"
    )


def test_run_main_interrupt(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise KeyboardInterrupt

    assert errors.run_main("prog", body) == errors.EX_INTERRUPTED == 130
    assert errors.run_main("prog", body, on_interrupt=errors.EX_OK) == 0
    assert capsys.readouterr().err == ""


def test_run_main_passes_the_status_through() -> None:
    assert errors.run_main("prog", lambda: 3) == 3


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (cli.main, ["list", "--no-such-flag"]),
        (worker.main, ["--no-such-flag"]),
        (smtpd.main, ["--no-such-flag"]),
    ],
)
def test_a_bad_argument_exits_64_with_one_line(
    main: object, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)  # type: ignore[operator]
    assert exit_info.value.code == errors.EX_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: ")
    assert err[-1].endswith(": unrecognized arguments: --no-such-flag")
