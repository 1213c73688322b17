"""The sendmail command line: every flag form from the clients reference."""

from __future__ import annotations

import pytest

from mssendmail.errors import UsageError
from mssendmail.submission import flags


def test_defaults() -> None:
    opts = flags.parse([])
    assert opts.mode == "submit"
    assert not opts.extract and not opts.ignore_dots and not opts.verbose
    assert opts.sender is None and opts.full_name is None and opts.config is None
    assert opts.recipients == []


@pytest.mark.parametrize(
    "argv",
    [
        ["-fme@x.org", "a"],
        ["-f", "me@x.org", "a"],
        ["-rme@x.org", "a"],
        ["-r", "me@x.org", "a"],
        ["-ti", "-fme@x.org", "a"],
        ["-tifme@x.org", "a"],
        ["-ti", "-f", "me@x.org", "a"],
    ],
)
def test_sender_glued_and_separate(argv: list[str]) -> None:
    opts = flags.parse(argv)
    assert opts.sender == "me@x.org"
    assert opts.recipients == ["a"]


@pytest.mark.parametrize(
    ("argv", "name"),
    [(["-FCronDaemon"], "CronDaemon"), (["-F", "Cron Daemon"], "Cron Daemon"), (["-F", ""], "")],
)
def test_full_name(argv: list[str], name: str) -> None:
    assert flags.parse(argv).full_name == name


def test_last_sender_wins() -> None:
    assert flags.parse(["-f", "a@x", "-fb@y"]).sender == "b@y"


@pytest.mark.parametrize(
    "argv",
    [["-i"], ["-oi"], ["-o", "i"], ["-ti"], ["-it"], ["-t", "-i", "-oi", "-t"]],
)
def test_ignore_dots(argv: list[str]) -> None:
    assert flags.parse(argv).ignore_dots


def test_oi_is_not_any_o_option() -> None:
    assert not flags.parse(["-oem"]).ignore_dots
    assert not flags.parse(["-oi2"]).ignore_dots


def test_extract_repeated() -> None:
    opts = flags.parse(["-t", "-i", "-oi", "-fsender@x", "-t"])  # PHPMailer
    assert opts.extract and opts.ignore_dots and opts.sender == "sender@x"


@pytest.mark.parametrize(
    "argv",
    [
        ["-oem"],
        ["-oee"],
        ["-oep"],
        ["-oeq"],
        ["-odi"],
        ["-odb"],
        ["-odq"],
        ["-oQ/var/spool/x"],
        ["-o", "em"],
        ["-B8BITMIME"],
        ["-B", "8BITMIME"],
        ["-B7BIT"],
        ["-N", "failure,delay"],
        ["-Nnever"],
        ["-R", "hdrs"],
        ["-Rfull"],
        ["-V", "envid"],
        ["-Venvid"],
        ["-O", "DeliveryMode=b"],
        ["-ODeliveryMode=b"],
        ["-m"],
        ["-n"],
        ["-G"],
        ["-U"],
        ["-Am"],
        ["-A", "c"],
        ["-X", "/tmp/traffic.log"],
        ["-C", "/etc/mail/sendmail.cf"],
        ["-L", "tag"],
        ["-h", "17"],
        ["-p", "smtp"],
        ["-d0.1"],
        ["-em"],
        ["-s"],
        ["-oem", "-oem", "-B8BITMIME", "-B", "8BITMIME", "-m", "-m"],
    ],
)
def test_accepted_and_ignored(argv: list[str]) -> None:
    opts = flags.parse([*argv, "--", "root"])
    assert opts.mode == "submit"
    assert opts.recipients == ["root"]
    assert opts.sender is None and not opts.extract and not opts.ignore_dots
    assert opts.ignored  # recorded, not acted on


def test_verbose() -> None:
    assert flags.parse(["-v", "root"]).verbose


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["-bm"], "submit"),
        (["-b", "m"], "submit"),
        (["-bp"], "list"),
        (["-bs"], "smtp"),
        (["-bi"], "newaliases"),
        (["-I"], "newaliases"),
        (["-q"], "flush"),
        (["-q30m"], "flush"),
        (["-qf"], "flush"),
        (["-bp", "-bm"], "submit"),
        (["--help"], "help"),
        (["--version"], "version"),
    ],
)
def test_modes(argv: list[str], mode: str) -> None:
    assert flags.parse(argv).mode == mode


def test_q_takes_only_a_glued_argument() -> None:
    opts = flags.parse(["-q", "root"])
    assert opts.mode == "flush"
    assert opts.recipients == ["root"]


@pytest.mark.parametrize(
    ("argv", "recipients"),
    [
        (["-i", "alice", "carol", "sender", "hidden"], ["alice", "carol", "sender", "hidden"]),
        (["-i", "-f", "s@x", "--", "a", "b"], ["a", "b"]),
        (["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], ["root"]),
        (["-oi", "alice@x,bob@y"], ["alice@x,bob@y"]),
        (["--", "-t"], ["-t"]),
        (["root", "-t"], ["root", "-t"]),  # options end at the first recipient
        (["-"], ["-"]),
    ],
)
def test_recipients(argv: list[str], recipients: list[str]) -> None:
    assert flags.parse(argv).recipients == recipients


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["--config", "/x/a.env", "root"], "/x/a.env"),
        (["--config=/x/b.env", "root"], "/x/b.env"),
        (["-t", "--config", "/x/c.env", "-i"], "/x/c.env"),
    ],
)
def test_config_anywhere_before_recipients(argv: list[str], path: str) -> None:
    assert flags.parse(argv).config == path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-Z"], "unknown option -Z"),
        (["-tZ"], "unknown option -Z"),
        (["--frobnicate"], "unknown option --frobnicate"),
        (["-f"], "-f needs an argument"),
        (["-F"], "-F needs an argument"),
        (["-t", "-B"], "-B needs an argument"),
        (["--config"], "--config needs"),
        (["--help=yes"], "takes no value"),
        (["-bz"], "unknown mode -bz"),
        (["-bd"], "mssendmail-smtpd"),
        (["-bv"], "not supported"),
        (["-\x1b[31m"], "unknown option -\\x1b"),
    ],
)
def test_usage_errors(argv: list[str], needle: str) -> None:
    with pytest.raises(UsageError) as info:
        flags.parse(argv)
    text = str(info.value)
    assert needle in text
    assert "\n" not in text and "\x1b" not in text


def test_table_is_data_and_usage_covers_it() -> None:
    text = flags.usage()
    for letter, (kind, action, meaning) in flags.FLAGS.items():
        assert kind in (flags.NO_ARG, flags.ARG, flags.OPTIONAL_GLUED)
        assert action and meaning
        assert f"-{letter}" in text
    assert "--config" in text


def test_docs_flag_table_covers_every_flag() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "submission.md").read_text()
    start = doc.index("<!-- section: submission -->")
    section = doc[start : doc.index("<!-- /section: submission -->")]
    for letter in flags.FLAGS:
        assert f"`-{letter}" in section or f" -{letter}" in section, letter
    for mode in flags.MODES:
        assert f"-b{mode}" in section
    assert "--config" in section
