"""The sendmail command line, as data: every flag, its argument and its meaning.

``FLAGS`` is the one table of single-letter flags. Each entry says whether
the flag takes an argument and what mssendmail does with it; ``parse`` reads
argv with getopt rules (as Sendmail and Postfix do):

* flags without an argument may be clustered: ``-ti`` is ``-t -i``;
* a flag's argument may be glued (``-fme@x``, ``-oem``, ``-B8BITMIME``) or
  the next argument (``-f me@x``, ``-B 8BITMIME``);
* ``-q`` takes an optional argument, glued only (``-q``, ``-q30m``);
* options end at ``--`` or at the first argument that does not start with
  ``-``; everything after that is a recipient (git send-email, Nodemailer
  and cron pass no ``--``);
* a flag may be repeated; for ``-f``/``-F``/``-b`` the last one wins.

Long options: ``--config PATH`` (or ``--config=PATH``), ``--help``,
``--version``. An unknown flag is a UsageError (exit 64) naming it.
Standard library only, no typing import: this is on the submission path.
"""

from __future__ import annotations

from mssendmail.errors import UsageError

# Argument kinds.
NO_ARG = 0
ARG = 1  # required: glued or the next argv element
OPTIONAL_GLUED = 2  # optional, and only glued (-q30m)

# Actions. IGNORED flags are accepted (with their argument) and do nothing.
IGNORED = "ignored"

# letter: (argument kind, action, what it means). Kept in one place so the
# docs/submission.md table, --help and the parser cannot disagree.
FLAGS: dict[str, tuple[int, str, str]] = {
    "t": (NO_ARG, "extract", "recipients from To:, Cc:, Bcc:, added to argv recipients"),
    "i": (NO_ARG, "ignore_dots", 'a line holding only "." does not end the input'),
    "f": (ARG, "sender", "envelope sender address"),
    "r": (ARG, "sender", "envelope sender address (old name for -f)"),
    "F": (ARG, "full_name", "full name for a From: the message lacks"),
    "b": (ARG, "mode", "mode: -bm submit (default), -bp list, -bs SMTP, -bi no-op"),
    "q": (OPTIONAL_GLUED, "flush", "ask the worker to retry all deferred mail now"),
    "o": (ARG, "option", "-oi is -i; every other -oX (-oem, -odi, ...) is ignored"),
    "v": (NO_ARG, "verbose", "print the queue id on stderr"),
    "I": (NO_ARG, "newaliases", "same as -bi: no-op"),
    "B": (ARG, IGNORED, "body type (7BIT, 8BITMIME): the worker detects it"),
    "N": (ARG, IGNORED, "DSN notify: Graph sends its own reports"),
    "R": (ARG, IGNORED, "DSN return: Graph sends its own reports"),
    "V": (ARG, IGNORED, "DSN envelope id"),
    "O": (ARG, IGNORED, "long option=value"),
    "C": (ARG, IGNORED, "Sendmail config file: use --config"),
    "L": (ARG, IGNORED, "syslog tag"),
    "h": (ARG, IGNORED, "hop count"),
    "p": (ARG, IGNORED, "protocol name"),
    "d": (ARG, IGNORED, "debug flags"),
    "e": (ARG, IGNORED, "error mode (like -oe)"),
    "X": (ARG, IGNORED, "traffic log file: never written"),
    "A": (ARG, IGNORED, "-Am/-Ac: submit.cf choice"),
    "m": (NO_ARG, IGNORED, "me too: the sender is never excluded anyway"),
    "n": (NO_ARG, IGNORED, "no aliasing"),
    "G": (NO_ARG, IGNORED, "gateway submission"),
    "U": (NO_ARG, IGNORED, "initial user submission"),
    "s": (NO_ARG, IGNORED, "old: save From lines"),
}

# -b modes; the others (daemon, verify, address test, ...) are refused.
MODES = {"m": "submit", "s": "smtp", "p": "list", "i": "newaliases"}
MODE_ADVICE = {
    "d": "mssendmail does not listen itself; run mssendmail-smtpd",
    "D": "mssendmail does not listen itself; run mssendmail-smtpd",
    "v": "address verification is not supported; send a test message instead",
}
LONG_OPTIONS = {"--config": "path of the config file", "--help": "", "--version": ""}


class Options:
    """What the command line asked for.

    mode is one of submit, smtp, list, newaliases, flush, help, version.
    """

    __slots__ = (
        "config",
        "extract",
        "full_name",
        "ignore_dots",
        "ignored",
        "mode",
        "recipients",
        "sender",
        "verbose",
    )

    def __init__(self) -> None:
        self.mode = "submit"
        self.extract = False
        self.ignore_dots = False
        self.verbose = False
        self.sender: str | None = None
        self.full_name: str | None = None
        self.config: str | None = None
        self.recipients: list[str] = []
        self.ignored: list[str] = []


def parse(argv: list[str]) -> Options:
    """Options from argv (without the program name); UsageError on a bad flag."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts.recipients = argv[i + 1 :]
            return opts
        if arg.startswith("--"):
            i = _long_option(opts, argv, i)
            continue
        if not arg.startswith("-") or arg == "-":
            opts.recipients = argv[i:]
            return opts
        i = _cluster(opts, argv, i)
    return opts


def _cluster(opts: Options, argv: list[str], i: int) -> int:
    """Apply the flags in argv[i]; returns the index of the next argument."""
    arg = argv[i]
    j = 1
    while j < len(arg):
        letter = arg[j]
        entry = FLAGS.get(letter)
        if entry is None:
            raise UsageError(f"unknown option -{_show(letter)}; see mssendmail --help")
        kind, action, _ = entry
        if kind == NO_ARG:
            _apply(opts, letter, action, "")
            j += 1
            continue
        value = arg[j + 1 :]
        if kind == ARG and not value:
            i += 1
            if i >= len(argv):
                raise UsageError(f"option -{letter} needs an argument; see mssendmail --help")
            value = argv[i]
        _apply(opts, letter, action, value)
        break
    return i + 1


def _long_option(opts: Options, argv: list[str], i: int) -> int:
    name, eq, value = argv[i].partition("=")
    if name not in LONG_OPTIONS:
        raise UsageError(f"unknown option {_show(name)}; see mssendmail --help")
    if name == "--config":
        if not eq:
            i += 1
            if i >= len(argv):
                raise UsageError("option --config needs a file name")
            value = argv[i]
        opts.config = value
    elif eq:
        raise UsageError(f"option {name} takes no value")
    else:
        opts.mode = name[2:]
    return i + 1


def _apply(opts: Options, letter: str, action: str, value: str) -> None:
    if action == "extract":
        opts.extract = True
    elif action == "ignore_dots":
        opts.ignore_dots = True
    elif action == "verbose":
        opts.verbose = True
    elif action == "sender":
        opts.sender = value
    elif action == "full_name":
        opts.full_name = value
    elif action == "flush":
        opts.mode = "flush"
    elif action == "newaliases":
        opts.mode = "newaliases"
    elif action == "mode":
        _mode(opts, value)
    elif action == "option" and value == "i":
        opts.ignore_dots = True
    else:
        opts.ignored.append(f"-{letter}{value}")


def _mode(opts: Options, value: str) -> None:
    if value in MODES:
        opts.mode = MODES[value]
    elif value[:1] in MODE_ADVICE:
        raise UsageError(f"-b{_show(value)} is not supported: {MODE_ADVICE[value[:1]]}")
    else:
        raise UsageError(f"unknown mode -b{_show(value)}; use -bm, -bp, -bs or -bi")


def _show(text: str) -> str:
    """Text from argv made safe for a one-line message."""
    shown = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown if len(shown) <= 60 else shown[:57] + "..."


# What --help calls each flag's argument; the rest are ARG.
ARG_NAMES = {"f": "ADDR", "r": "ADDR", "F": "NAME", "b": "MODE", "q": "TIME", "o": "OPTION"}
CONFIG_HELP = "config file (default $MSSENDMAIL_CONFIG, then /etc/mssendmail/.env)"


def usage() -> str:
    """--help text, generated from the table."""
    lines = [
        "usage: mssendmail [flags] [--] [recipient ...] < message",
        "       mailq  |  mssendmail -bp      list the queue",
        "",
        f"  --config PATH  {CONFIG_HELP}",
        "  --help         print this help and exit",
        "  --version      print the version and exit",
    ]
    for letter, (kind, action, text) in FLAGS.items():
        arg = ARG_NAMES.get(letter, "ARG")
        form = {NO_ARG: f"-{letter}", ARG: f"-{letter} {arg}", OPTIONAL_GLUED: f"-{letter}[{arg}]"}[
            kind
        ]
        lines.append(f"  {form:<13}  {text}{' (ignored)' if action == IGNORED else ''}")
    lines += [
        "",
        "Exit status: 0 queued, 64 usage, 65 bad message, 75 try again later,",
        "77 permission denied (mailq), 78 unusable config.",
        "See mssendmail(8); the queue: mssendmail-queue(8).",
    ]
    return "\n".join(lines) + "\n"
