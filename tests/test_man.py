"""The man pages: built from man/*.md, lint-clean, and complete.

The drift tests read the committed roff in man/build/ (what install.sh
installs) and compare it with the code: every sendmail flag of
mssendmail.submission.flags, every key of mssendmail.config, every command
and option of the argparse parsers. They fail when one is undocumented.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail import config
from mssendmail.admin import cli
from mssendmail.delivery import worker
from mssendmail.smtp import smtpd
from mssendmail.spool import layout
from mssendmail.submission import flags

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "man"
BUILT = MAN / "build"
PAGES = [
    "mssendmail.8",
    "mssendmail-worker.8",
    "mssendmail-queue.8",
    "mssendmail-smtpd.8",
    "mssendmail.env.5",
    "mssendmail-spool.5",
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it on Debian)")
    return path


# --- reading pandoc's roff ---------------------------------------------------


def plain(roff: str) -> str:
    """Roff text without font changes and escapes, as a reader sees it."""
    text = re.sub(r"\\f(\[[^\]]*\]|.)", "", roff)
    text = text.replace("\\-", "-").replace("\\[aq]", "'").replace("\\[dq]", '"')
    text = text.replace("\\[ti]", "~").replace("\\[ha]", "^").replace("\\&", "")
    return re.sub(r"\\\[(lq|rq)\]", '"', text).replace("\\\\", "\\")


def section(roff: str, name: str) -> str:
    match = re.search(rf'^\.SH "?{re.escape(name)}"?\n(.*?)(?=^\.SH |\Z)', roff, re.S | re.M)
    assert match, f"no section {name}"
    return match.group(1)


def entries(roff: str, name: str) -> dict[str, str]:
    """The .TP entries of a section: term -> its text (plain)."""
    found: dict[str, str] = {}
    blocks = re.split(r"^\.TP\n", section(roff, name), flags=re.M)[1:]
    for block in blocks:
        term, _, body = block.partition("\n")
        body = re.split(r"^\.(?:SS|PP)\b", body, flags=re.M)[0]
        found[plain(term).strip()] = " ".join(plain(body).split())
    return found


def page(name: str) -> str:
    return (BUILT / name).read_text()


def options(terms: Iterator[str] | list[str]) -> set[str]:
    """The option strings named in terms such as '-i, -oi' or '--config PATH'."""
    return {tok for term in terms for tok in re.findall(r"(?<![\w-])--?[\w-]+", term)}


def actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- the pages exist, are current and lint-clean ---------------------------


def test_every_source_has_its_built_page() -> None:
    assert sorted(p.name[:-3] for p in MAN.glob("*.md")) == sorted(PAGES)
    assert sorted(p.name for p in BUILT.iterdir()) == sorted(PAGES)


def test_built_pages_are_committed() -> None:
    """install.sh and the packages ship man/build, so git must carry it."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "-C", REPO, "ls-files", "man/build"], capture_output=True, text=True
    )
    tracked = sorted(Path(line).name for line in result.stdout.split())
    ignored = subprocess.run(
        ["git", "-C", REPO, "check-ignore", *(f"man/build/{n}" for n in PAGES)],
        capture_output=True,
        text=True,
    )
    assert (ignored.returncode, ignored.stdout) == (1, ""), "git ignores man/build: .gitignore"
    assert result.returncode == 0, result.stderr
    assert tracked == sorted(PAGES), f"man/build is not committed (tracked: {tracked})"


def test_built_pages_are_current(tmp_path: Path) -> None:
    """man/build is what `util/build-man.sh` makes of man/*.md and docs/ now."""
    need("pandoc")
    committed = page(PAGES[0]).splitlines()[0]
    version = subprocess.run(["pandoc", "--version"], capture_output=True, text=True).stdout
    made_by = re.sub(r"^.*Pandoc ", "", committed)
    if made_by != version.split()[1]:
        pytest.skip(f"man/build was made by pandoc {made_by}; this is {version.split()[1]}")
    result = subprocess.run(
        ["bash", REPO / "util" / "build-man.sh", tmp_path], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    stale = [n for n in PAGES if (tmp_path / n).read_text() != page(n)]
    assert not stale, f"man/build is stale for {stale}: run util/build-man.sh and commit"


@pytest.mark.parametrize("name", PAGES)
def test_groff_lint_is_clean(name: str) -> None:
    need("groff")
    result = subprocess.run(
        ["groff", "-man", "-t", "-ww", "-z", BUILT / name], capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("name", PAGES)
def test_mandoc_finds_no_errors(name: str) -> None:
    need("mandoc")
    result = subprocess.run(
        ["mandoc", "-T", "lint", "-W", "error", BUILT / name], capture_output=True, text=True
    )
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("name", PAGES)
def test_page_has_the_usual_sections(name: str) -> None:
    roff = page(name)
    title = name.rsplit(".", 1)[0].upper()
    assert re.search(rf'^\.TH "{re.escape(title)}" "{name[-1]}"', roff, re.M)
    heads = ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"]
    if name.endswith(".8"):
        heads += ["OPTIONS", "EXIT STATUS"]
    for head in heads:
        section(roff, head)


# --- drift: each page against the code ---------------------------------------


def missing_flags(roff: str) -> list[str]:
    named = options(entries(roff, "OPTIONS"))
    missing = []
    for letter in flags.FLAGS:
        if letter == "b":
            missing += [f"-b{m}" for m in flags.MODES if f"-b{m}" not in named]
        elif not any(re.fullmatch(rf"-{letter}(X|[A-Z]+)?", tok) for tok in named):
            missing.append(f"-{letter}")
    missing += [o for o in flags.LONG_OPTIONS if o not in named]
    return missing


def test_mssendmail_8_documents_every_flag() -> None:
    assert missing_flags(page("mssendmail.8")) == []


def test_the_flag_check_notices_a_missing_flag() -> None:
    roff = page("mssendmail.8")
    doctored = re.sub(r"^\.TP\n.*-B TYPE.*\n", ".TP\nnothing\n", roff, flags=re.M)
    assert doctored != roff
    assert missing_flags(doctored) == ["-B"]


def test_mssendmail_8_documents_every_exit_code() -> None:
    codes = set(entries(page("mssendmail.8"), "EXIT STATUS"))
    assert codes >= {"0", "64", "65", "70", "75", "77", "78"}


def key_entries(roff: str) -> dict[str, str]:
    return entries(roff, "KEYS")


def test_env_5_documents_every_key_with_its_default() -> None:
    keys = key_entries(page("mssendmail.env.5"))
    assert set(keys) == set(config.DEFAULTS)
    for key, default in config.DEFAULTS.items():
        assert keys[key].startswith(f"Default: {default or '(unset)'}. "), key


def test_the_key_check_notices_a_missing_key() -> None:
    roff = page("mssendmail.env.5")
    doctored = re.sub(r"^\.TP\n.*TENANT_ID.*\n", ".TP\nnothing\n", roff, count=1, flags=re.M)
    assert set(config.DEFAULTS) - set(key_entries(doctored)) == {"TENANT_ID"}


def command_entries() -> dict[str, str]:
    """Each mssendmail-queue command -> its term and text in COMMANDS."""
    found: dict[str, str] = {}
    for term, body in entries(page("mssendmail-queue.8"), "COMMANDS").items():
        for part in term.split(" / "):
            found[part.split()[0]] = f"{term} {body}"
    return found


def test_queue_8_documents_every_command_and_its_options() -> None:
    parser = cli.build_parser()
    documented = command_entries()
    assert set(documented) == set(subcommands(parser))
    for name, sub in subcommands(parser).items():
        text = documented[name]
        for action in actions(sub):
            if action.dest in ("help", "config"):  # in OPTIONS, for every command
                continue
            shown = action.option_strings or [action.metavar or action.dest.upper()]
            for option in shown:
                assert re.search(rf"(?<![\w-]){re.escape(option)}\b", text), f"{name} {option}"
    assert set(entries(page("mssendmail-queue.8"), "SIGNALS")) >= {"SIGINT (Ctrl-C)", "SIGPIPE"}
    named = options(entries(page("mssendmail-queue.8"), "OPTIONS"))
    for action in actions(parser):
        assert set(action.option_strings) <= named, action.option_strings


@pytest.mark.parametrize(
    ("name", "build"),
    [("mssendmail-worker.8", worker.build_parser), ("mssendmail-smtpd.8", smtpd.build_parser)],
)
def test_daemon_pages_document_every_option(name: str, build: object) -> None:
    assert callable(build)
    parser: argparse.ArgumentParser = build()
    named = options(entries(page(name), "OPTIONS"))
    for action in actions(parser):
        assert set(action.option_strings) <= named, action.option_strings
    assert entries(page(name), "SIGNALS")
    assert "0" in entries(page(name), "EXIT STATUS")
    assert "78" in entries(page(name), "EXIT STATUS")


def test_spool_5_documents_every_directory() -> None:
    roff = page("mssendmail-spool.5")
    states = {term.rstrip("/") for term in entries(roff, "STATES")}
    assert states == {layout.MAILDROP, layout.TRIGGER, *layout.PRIVATE_AREAS}
    modes = " ".join(entries(roff, "LAYOUT AND MODES"))
    for area in (layout.MAILDROP, layout.TRIGGER, *layout.PRIVATE_AREAS):
        assert area in modes, area
