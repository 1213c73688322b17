"""A config line python-dotenv cannot parse (issue 12, low items).

python-dotenv only logs "could not parse statement" and skips the line, so
a typo silently dropped a setting and `check` said PASS. Now: the worker and
smtpd exit 78 with one line naming the file and line, `check` FAILs, and
sendmail warns but still queues the mail (an admin's typo must not lose it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssendmail import config
from mssendmail.admin import checks
from mssendmail.errors import ConfigError
from mssendmail.spool.layout import MAILDROP, Spool

pytestmark = pytest.mark.usefixtures("clean_env")

BIN = Path(sys.executable).parent
SECRET = "s3cr3t-value-never-printed"


def broken(config_file: Path) -> Path:
    """The fixture's config with a bad line 7 holding a secret, and a good line after it."""
    text = config_file.read_text()
    assert text.count("\n") == 6
    config_file.write_text(text + f"CLIENT_SECRET='{SECRET}\nFROM_NAME=Relay\n")
    config_file.chmod(0o640)
    return config_file


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("SENDER relay@example.com\n", 1, "(starts with SENDER) cannot be parsed"),
        ("A=1\nB='open\nC=3\n", 2, "(starts with B) cannot be parsed"),
        ('A=1\nB="x" junk\n', 2, "(starts with B) cannot be parsed"),
        ("A=1\n=value\n", 2, "(not KEY=value) cannot be parsed"),
        ("A=1\n\nRETRY_MIN\n", 3, "(starts with RETRY_MIN) has no '='"),
    ],
)
def test_each_bad_line_is_reported_with_its_number(text: str, line: int, why: str) -> None:
    values, errors = config.parse_env_text(text)
    assert errors == [f"line {line} {why}"]
    assert values.get("A", "1") == "1"  # the lines that parse still count


def test_plain_and_fancy_files_have_no_errors() -> None:
    plain = "# c\nexport A=1\nB='two words' # c\nC=\n"
    fancy = "A=1\nB=\"x\\ny\"\nC=${A}\nD='multi\nline'\n"
    assert config.parse_env_text(plain) == ({"A": "1", "B": "two words", "C": ""}, [])
    assert config.parse_env_text(fancy) == (
        {"A": "1", "B": "x\ny", "C": "1", "D": "multi\nline"},
        [],
    )


def test_the_message_names_file_and_line_but_not_the_value(config_file: Path) -> None:
    cfg = config.load(str(broken(config_file)))
    assert cfg.get("FROM_NAME") == "Relay"
    with pytest.raises(ConfigError) as caught:
        cfg.check_syntax()
    text = str(caught.value)
    assert f"config {config_file} line 7 (starts with CLIENT_SECRET) cannot be parsed" in text
    assert "KEY=value" in text and "\n" not in text and SECRET not in text


def test_check_fails_on_it(config_file: Path) -> None:
    result = checks.check_config(config.load(str(broken(config_file))))
    assert result.status == checks.FAIL and "line 7" in result.detail
    assert checks.check_config(config.load(str(config_file))).status == checks.FAIL
    config_file.write_text(config_file.read_text().replace(f"'{SECRET}", f"'{SECRET}'"))
    assert checks.check_config(config.load(str(config_file))).status == checks.PASS


def _run(argv: list[str], config_file: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MSSENDMAIL_CONFIG": str(config_file)}
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("program", ["mssendmail-worker", "mssendmail-smtpd"])
def test_worker_and_smtpd_refuse_it_in_one_line(program: str, config_file: Path) -> None:
    args = ["--once"] if program == "mssendmail-worker" else []
    result = _run([str(BIN / program), *args], broken(config_file))
    assert result.returncode == 78, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{program}: config {config_file} line 7 ")
    assert SECRET not in result.stderr


def test_sendmail_warns_and_still_queues(config_file: Path, spool: Spool) -> None:
    result = _run([str(BIN / "mssendmail"), "-t"], broken(config_file), "To: a@example.org\n\nhi\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"mssendmail: warning: config {config_file} line 7 ")
    assert "mail is still accepted" in result.stderr and result.stderr.count("\n") == 1
    assert len(os.listdir(spool.dir(MAILDROP))) == 1


# The submitter reads .env with its own fast reader (no dotenv import); the
# worker reads it with python-dotenv. They must agree, or sendmail could queue
# into another QUEUE_DIR than the worker drains.
ENV_PIECES = [
    "A", "B", "=", " ", "\t", "#", "'", '"', "x", "y z", "$", "\\", "export ",
    "\n", "\r\n", "\r", "é", "\u00a0", "\x0b", "\f", "\u2028", "${A}", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "QUEUE_DIR=/var/spool/x\t# the spool\n",  # a tab before the comment
        "SENDER= # set me\n",  # dotenv 1.2.1 keeps '# set me', 1.2.4 drops it
        "#\x0bQUEUE_DIR=/tmp/q\n",  # \v does not end a dotenv line
        "A=x #c\nB='y' # c\nC=\n",
    ],
)
def test_fast_reader_agrees_with_dotenv_on_known_cases(text: str) -> None:
    assert config.parse_env_text(text) == config._parse_with_dotenv(text)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(ENV_PIECES), max_size=12).map("".join))
def test_fast_reader_agrees_with_dotenv(text: str) -> None:
    assert config.parse_env_text(text) == config._parse_with_dotenv(text)
