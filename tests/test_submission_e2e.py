"""The installed mssendmail, run as a subprocess exactly the way real clients call it.

argv and message shapes come from shared/reference/sendmail-clients.md (captured
on Debian 12). Each test checks the stored record with record.verify: envelope
sender, recipients, flags, and the message bytes exactly as handed over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mssendmail.spool import record
from mssendmail.spool.layout import MAILDROP, Spool, init_tree

MSSENDMAIL = os.path.join(os.path.dirname(sys.executable), "mssendmail")


@pytest.fixture
def env(spool: Spool, tmp_path: Path) -> dict[str, str]:
    """A caller's environment: no config keys but the spool, like cron's bare PATH."""
    base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "USER", "LOGNAME")}
    base.update(
        PATH="/usr/bin:/bin",
        QUEUE_DIR=spool.root,
        MSSENDMAIL_CONFIG=str(tmp_path / "no-such.env"),
    )
    return base


def run(
    argv: list[str], data: bytes, env: dict[str, str], *, shell: bool = False
) -> subprocess.CompletedProcess[bytes]:
    if shell:  # PHP mail() runs the command line through sh -c
        cmd: Any = " ".join([MSSENDMAIL, *argv])
        return subprocess.run(cmd, shell=True, input=data, env=env, capture_output=True)
    return subprocess.run([MSSENDMAIL, *argv], input=data, env=env, capture_output=True)


def stored(spool: Spool) -> list[tuple[dict[str, Any], bytes]]:
    found = []
    for name in sorted(os.listdir(spool.dir(MAILDROP))):
        assert not name.startswith("tmp."), "a temp file was left behind"
        with open(spool.path(MAILDROP, name), "rb") as fh:
            envelope, size = record.verify(fh)
            found.append((envelope, record.read_message(fh, size)))
    return found


def one(spool: Spool, proc: subprocess.CompletedProcess[bytes]) -> tuple[dict[str, Any], bytes]:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"" and proc.stderr == b""  # nothing printed on success
    found = stored(spool)
    assert len(found) == 1
    return found[0]


EML = (
    b"From: Alice <alice@example.com>\n"
    b"To: Bob <bob@example.com>, carol@example.com\n"
    b"Cc: dave@example.com\n"
    b"Bcc: hidden@example.com\n"
    b"Subject: hello\n"
    b"\n"
    b"Hi all.\n"
)


def test_cat_mail_eml_pipe(spool: Spool, env: dict[str, str], tmp_path: Path) -> None:
    eml = tmp_path / "mail.eml"
    eml.write_bytes(EML)
    proc = subprocess.run(f"cat {eml} | {MSSENDMAIL}", shell=True, env=env, capture_output=True)
    envelope, body = one(spool, proc)
    assert envelope["recipients"] == [
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
        "hidden@example.com",
    ]
    assert envelope["from_headers"] is True and envelope["sender"] == ""
    assert body == EML


def test_php_mail(spool: Spool, env: dict[str, str]) -> None:
    # PHP: headers CRLF, body LF; 5th parameter -f.
    msg = (
        b"To: user@example.com\r\nSubject: PHP\r\nFrom: site@example.com\r\n"
        b"MIME-Version: 1.0\r\n\r\nline one\n.\nline after a lone dot\n"
    )
    envelope, body = one(spool, run(["-t", "-i", "-fbounce@example.com"], msg, env, shell=True))
    assert envelope["recipients"] == ["user@example.com"]
    assert envelope["sender"] == "bounce@example.com"
    assert body == msg  # -i: the lone dot is data


def test_phpmailer_repeated_t(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: a@example.com\r\nBcc: b@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    envelope, _ = one(spool, run(["-t", "-i", "-oi", "-fsender@example.com", "-t"], msg, env))
    assert envelope["recipients"] == ["a@example.com", "b@example.com"]
    assert envelope["sender"] == "sender@example.com"


def test_ruby_mail_gem(spool: Spool, env: dict[str, str]) -> None:
    # Mastodon/ActionMailer: Bcc only in argv, after --.
    msg = b"From: m@example.com\nTo: alice@example.com, bob@example.com\nSubject: r\n\nbody\n"
    argv = ["-i", "-f", "m@example.com", "--", "alice@example.com", "bob@example.com"]
    envelope, body = one(spool, run([*argv, "carol@example.com", "hidden@example.com"], msg, env))
    assert envelope["recipients"] == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "hidden@example.com",
    ]
    assert envelope["argv_recipients"] == envelope["recipients"]
    assert envelope["from_headers"] is False
    assert envelope["sender"] == "m@example.com"
    assert body == msg


@pytest.mark.parametrize(
    ("rcpt", "expected"),
    [
        ("root", ["root"]),
        ("alice@example.com,bob@example.com", ["alice@example.com", "bob@example.com"]),
    ],
)
def test_debian_cron(spool: Spool, env: dict[str, str], rcpt: str, expected: list[str]) -> None:
    msg = (
        b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> run-parts /etc/cron.daily\n"
        b"X-Cron-Env: <SHELL=/bin/sh>\n\n\xe9t\xe9 8-bit output\n"
    )
    envelope, body = one(spool, run(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", rcpt], msg, env))
    assert envelope["recipients"] == expected
    assert envelope["full_name"] == "CronDaemon"
    assert envelope["from_headers"] is False
    assert body == msg


def test_cronie(spool: Spool, env: dict[str, str]) -> None:
    msg = b"From: root\nTo: admin@example.com\nSubject: cronie\n\nout\n"
    argv = ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"]
    envelope, _ = one(spool, run(argv, msg, env))
    assert envelope["recipients"] == ["admin@example.com"]
    assert envelope["sender"] == "root"


def test_git_send_email(spool: Spool, env: dict[str, str]) -> None:
    msg = (
        b"From: dev@example.com\nTo: alice@example.com\nCc: carol@example.com\nSubject: [PATCH]\n\n"
    )
    msg += b"diff --git a/x b/x\n.\n-removed\n+added\n"
    argv = ["-i", "alice@example.com", "carol@example.com", "dev@example.com", "hidden@example.com"]
    envelope, body = one(spool, run(argv, msg, env))
    assert envelope["recipients"] == argv[1:]
    assert body == msg


def test_git_send_email_smtp_server_path(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: alice@example.com\nSubject: p\n\nx\n"
    argv = ["-f", "bounce@example.com", "-i", "alice@example.com", "dev@example.com"]
    envelope, _ = one(spool, run(argv, msg, env))
    assert envelope["sender"] == "bounce@example.com"
    assert envelope["recipients"] == ["alice@example.com", "dev@example.com"]


def test_symfony_t_i_command(spool: Spool, env: dict[str, str]) -> None:
    msg = b"From: s@example.com\r\nTo: alice@example.com\r\nSubject: sf\r\n\r\nbody\r\n"
    argv = [
        "-i",
        "-fs@example.com",
        "--",
        "alice@example.com",
        "carol@example.com",
        "hidden@example.com",
    ]
    envelope, _ = one(spool, run(argv, msg, env))
    assert envelope["recipients"] == [
        "alice@example.com",
        "carol@example.com",
        "hidden@example.com",
    ]


def test_symfony_without_i_is_postfix_compatible(spool: Spool, env: dict[str, str]) -> None:
    # Symfony dot-stuffs when -i is missing; Postfix keeps ".." as is, and so do we.
    msg = b"To: a@example.com\n\n..stuffed line\nend\n"
    _, body = one(spool, run(["-fs@example.com", "--", "a@example.com"], msg, env))
    assert body == msg


def test_bsd_mailx_no_from(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: root\nBcc: ops@example.com\nSubject: smartd\n\ndisk\n"
    envelope, body = one(spool, run(["-i", "-t"], msg, env))
    assert envelope["recipients"] == ["root", "ops@example.com"]
    assert body == msg


def test_s_nail_and_mutt(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: alice@example.com\nSubject: m\n\nx\n"
    run_argvs = [
        ["-i", "-F", "Some Name", "-f", "me@example.com", "-m", "-v", "--", "alice@example.com"],
        [
            "-oem",
            "-oi",
            "-f",
            "me@example.com",
            "-N",
            "failure,delay",
            "-R",
            "hdrs",
            "--",
            "bob@x.org",
        ],
    ]
    results = [run(argv, msg, env) for argv in run_argvs]
    assert [r.returncode for r in results] == [0, 0]
    assert results[0].stderr.startswith(b"mssendmail: queued as ")  # -v
    envelopes = sorted((e["recipients"], e["full_name"]) for e, _ in stored(spool))
    assert envelopes == [(["alice@example.com"], "Some Name"), (["bob@x.org"], None)]


def test_nodemailer(spool: Spool, env: dict[str, str]) -> None:
    msg = b"From: n@example.com\r\nTo: alice@example.com\r\nBcc: hidden@example.com\r\n\r\nbody\n"
    argv = ["-i", "-f", "n@example.com", "alice@example.com", "hidden@example.com"]
    envelope, body = one(spool, run(argv, msg, env))
    assert envelope["recipients"] == ["alice@example.com", "hidden@example.com"]
    assert body == msg


def test_logwatch_without_i_several_to_lines(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: root\nTo: admin@example.com\nSubject: logwatch\n\nreport\n.\nignored tail\n"
    envelope, body = one(spool, run(["-t"], msg, env))
    assert envelope["recipients"] == ["root", "admin@example.com"]
    assert body == b"To: root\nTo: admin@example.com\nSubject: logwatch\n\nreport\n"


def test_pyramid_mailer_unites_headers_and_argv(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: alice@example.com\nCc: carol@example.com\nSubject: p\n\nx\n"
    argv = [
        "-t",
        "-i",
        "-f",
        "s@example.com",
        "alice@example.com",
        "carol@example.com",
        "hidden@example.com",
    ]
    envelope, _ = one(spool, run(argv, msg, env))
    assert envelope["recipients"] == [
        "alice@example.com",
        "carol@example.com",
        "hidden@example.com",
    ]
    assert envelope["from_headers"] is True


def test_apt_listchanges_oi_t(spool: Spool, env: dict[str, str]) -> None:
    msg = b"To: root\nSubject: apt-listchanges: news\n\nnews\n"
    envelope, _ = one(spool, run(["-oi", "-t"], msg, env))
    assert envelope["recipients"] == ["root"]


def test_names_it_is_linked_as(spool: Spool, env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    for name in ("sendmail", "mailq", "newaliases"):
        (bin_dir / name).symlink_to(MSSENDMAIL)
    proc = subprocess.run(
        [str(bin_dir / "sendmail"), "root"], input=b"x\n", env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    listing = subprocess.run([str(bin_dir / "mailq")], env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and "1 Request." in listing.stdout and "root" in listing.stdout
    proc = subprocess.run([str(bin_dir / "newaliases")], env=env, capture_output=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_bad_input_exit_codes(spool: Spool, env: dict[str, str]) -> None:
    cases = [
        ([], b"Subject: none\n\nx\n", 64),
        (["bad@@x"], b"x\n", 65),
        (["root"], b"a\0b", 65),
        (["-Q", "root"], b"x\n", 64),
    ]
    for argv, data, code in cases:
        proc = run(argv, data, env)
        assert proc.returncode == code, (argv, proc.stderr)
        assert proc.stderr.startswith(b"mssendmail: ") and proc.stderr.count(b"\n") == 1
    assert stored(spool) == []


def test_spool_not_writable_is_75(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "file-not-dir"
    bad.write_text("x")
    proc = run(["root"], b"x\n", {**env, "QUEUE_DIR": str(bad)})
    assert proc.returncode == 75
    assert b"QUEUE_DIR" in proc.stderr and proc.stderr.count(b"\n") == 1


def test_big_message_is_streamed(spool: Spool, env: dict[str, str]) -> None:
    size = 20 * 1024 * 1024
    head = b"To: a@example.com\nSubject: big\n\n"
    data = head + b"y" * (size - len(head))
    envelope, body = one(spool, run(["-i"], data, env))
    assert envelope["recipients"] == ["a@example.com"] and body == data


def test_over_max_message_size_removes_partial(spool: Spool, env: dict[str, str]) -> None:
    proc = run(["-i", "root"], b"z" * 200_000, {**env, "MAX_MESSAGE_SIZE": "100K"})
    assert proc.returncode == 65 and b"MAX_MESSAGE_SIZE" in proc.stderr
    assert os.listdir(spool.dir(MAILDROP)) == []


def test_q_flush_with_a_listening_worker(spool: Spool, env: dict[str, str]) -> None:
    fifo = os.open(spool.trigger_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        proc = run(["-q"], b"", env)
        assert proc.returncode == 0 and proc.stderr == b""
        assert os.read(fifo, 16) == b"F"
    finally:
        os.close(fifo)


def test_spool_created_by_init_as_caller(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "fresh"
    init_tree(str(root))
    proc = run(["root"], b"x\n", {**env, "QUEUE_DIR": str(root)})
    assert proc.returncode == 0
    assert len(os.listdir(root / MAILDROP)) == 1
    shutil.rmtree(root)
