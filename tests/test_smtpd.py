"""mssendmail-smtpd: AUTH, STARTTLS, limits, the no-open-relay rule, systemd activation."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from smtpwire import bs_argv, connect, maildrop_names, read_record, serving, split_received

from mssendmail.config import load
from mssendmail.smtp import smtpd
from mssendmail.spool.layout import Spool

pytestmark = pytest.mark.usefixtures("clean_env")

PASSWORD = "correct horse battery staple"


def smtpd_argv() -> list[str]:
    script = Path(sys.executable).with_name("mssendmail-smtpd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mssendmail.smtp.smtpd"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """mssendmail-smtpd as a subprocess; its log goes to a file (a pipe could fill up)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], **popen: object) -> None:
        self.port = free_port()
        self.log = tmp_path / f"smtpd-{self.port}.log"
        env = {"SMTPD_LISTEN": f"127.0.0.1:{self.port}", **env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                smtpd_argv(),
                stderr=log,
                env={**os.environ, **env},
                **popen,  # type: ignore[call-overload]
            )

    def wait_ready(self) -> Daemon:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"smtpd exited {self.proc.returncode}: {self.log_text()}")
            try:
                with connect(("127.0.0.1", self.port)) as probe:
                    probe.reply()
                    probe.expect("QUIT", 221)
                    # EOF comes after the server dropped the session from its count.
                    assert probe.reader.read() == b""
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"smtpd did not start: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """alice via the --hash-password command line, bob via pbkdf2 (the other format)."""
    out = subprocess.run(
        [*smtpd_argv(), "--hash-password", "alice"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    salt = b"0123456789abcdef"
    key = hashlib.pbkdf2_hmac("sha256", b"bob's password", salt, 1000)
    bob = f"pbkdf2_sha256$1000${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    path = tmp_path / "smtpd-users"
    path.write_text(f"# users\n\n{out}bob:{bob}\n")
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca, cert_path, key_path


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def start(daemons: list[Daemon], tmp_path: Path, **env: str) -> Daemon:
    daemon = Daemon(tmp_path, env)
    daemons.append(daemon)
    return daemon.wait_ready()


def message(subject: str, size: int = 0) -> bytes:
    body = (b"x" * 76 + b"\r\n") * (size // 78 + 1) if size else b"hello\r\n"
    return (
        f"From: dev@example.org\r\nTo: ops@example.org\r\nSubject: {subject}\r\n\r\n".encode()
        + body
    )


# -- AUTH and TLS ------------------------------------------------------------


def test_auth_plain_and_login_on_loopback(
    daemons: list[Daemon], tmp_path: Path, spool: Spool, users_file: Path
) -> None:
    d = start(daemons, tmp_path, SMTPD_USERS_FILE=str(users_file))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo()
        # Loopback: AUTH without TLS.
        assert set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, _ = s.mail("dev@example.org")
        assert code == 530  # never an open relay, even on loopback, once users exist
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            s.login("alice", "wrong password")
        assert failed.value.smtp_code == 535
        s.user, s.password = "alice", PASSWORD
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        assert s.sendmail("dev@example.org", ["ops@example.org"], message("plain")) == {}
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo()
        s.user, s.password = "bob", "bob's password"
        assert s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0] == 235
        assert s.sendmail("dev@example.org", ["ops@example.org"], message("login")) == {}
    users = sorted(read_record(spool, qid)[0].get("smtp_user") for qid in maildrop_names(spool))
    assert users == ["alice", "bob"]
    assert "correct horse" not in d.log_text() and "bob's password" not in d.log_text()
    assert d.stop() == 0


def test_starttls_with_a_throwaway_ca(
    daemons: list[Daemon],
    tmp_path: Path,
    spool: Spool,
    users_file: Path,
    tls_files: tuple[trustme.CA, Path, Path],
) -> None:
    ca, cert, key = tls_files
    d = start(
        daemons,
        tmp_path,
        SMTPD_USERS_FILE=str(users_file),
        SMTPD_TLS_CERT=str(cert),
        SMTPD_TLS_KEY=str(key),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert s.starttls(context=context)[0] == 220  # verifies the chain and the IP SAN
        s.ehlo()
        s.login("alice", PASSWORD)
        assert s.sendmail("dev@example.org", ["ops@example.org"], message("tls")) == {}
    (qid,) = maildrop_names(spool)
    received, _ = split_received(read_record(spool, qid)[1])
    assert b"with ESMTPSA id" in received


def test_untrusted_certificate_is_rejected_by_a_verifying_client(
    daemons: list[Daemon], tmp_path: Path, tls_files: tuple[trustme.CA, Path, Path]
) -> None:
    _, cert, key = tls_files
    d = start(daemons, tmp_path, SMTPD_TLS_CERT=str(cert), SMTPD_TLS_KEY=str(key))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s, pytest.raises(ssl.SSLError):
        s.starttls(context=ssl.create_default_context())  # the throwaway CA is not trusted


def test_non_loopback_listener_offers_auth_only_after_tls(
    spool: Spool, users_file: Path, tls_files: tuple[trustme.CA, Path, Path]
) -> None:
    """The per-listener policy, served in process on 127.0.0.1 so nothing is exposed."""
    ca, cert, key = tls_files
    env = {
        "QUEUE_DIR": spool.root,
        "SMTPD_USERS_FILE": str(users_file),
        "SMTPD_TLS_CERT": str(cert),
        "SMTPD_TLS_KEY": str(key),
        "SMTPD_LISTEN": "192.0.2.10:25",
    }
    settings = smtpd.settings(load(environ=env), [])
    daemon = smtpd.Daemon(settings)
    with serving(daemon.factory(loopback=False)) as address:
        with connect(address) as w:
            w.reply()
            features = w.expect("EHLO client", 250)
            assert not any(b"AUTH" in line for line in features)
            assert w.expect("AUTH PLAIN " + "AGFsaWNlAHg=", 538)[0].startswith(b"538 5.7.11")
            assert w.expect("MAIL FROM:<dev@example.org>", 530)[0].startswith(b"530 5.7.0")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with smtplib.SMTP(*address, timeout=10) as s:
            s.starttls(context=context)
            s.ehlo()
            assert "PLAIN" in s.esmtp_features["auth"]
            s.login("alice", PASSWORD)
            assert s.sendmail("dev@example.org", ["ops@example.org"], message("public")) == {}
    assert len(maildrop_names(spool)) == 1


@pytest.mark.parametrize(
    ("listen", "extra", "words"),
    [
        ("0.0.0.0:{port}", {}, "open relay"),
        ("[::]:{port}", {}, "open relay"),
        ("127.0.0.1:{port},192.0.2.1:{port}", {}, "open relay"),
        ("*:{port}", {}, "open relay"),
        ("0.0.0.0:{port}", {"users": True}, "STARTTLS"),
    ],
)
def test_refuses_to_start_as_an_open_relay(
    tmp_path: Path, users_file: Path, listen: str, extra: dict[str, bool], words: str
) -> None:
    port = free_port()
    env = {**os.environ, "SMTPD_LISTEN": listen.format(port=port)}
    if extra:
        env["SMTPD_USERS_FILE"] = str(users_file)
    result = subprocess.run(smtpd_argv(), env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1 and words in result.stderr
    assert result.stderr.startswith("mssendmail-smtpd: ")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # never bound


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SMTPD_LISTEN": "localhost"}, "not host:port"),
        ({"SMTPD_LISTEN": "::1:25"}, "not host:port"),
        ({"SMTPD_MAX_CLIENTS": "0"}, "SMTPD_MAX_CLIENTS"),
        ({"SMTPD_TLS_CERT": "/nonexistent.pem"}, "SMTPD_TLS_KEY"),
        ({"SMTPD_TLS_CERT": "/nonexistent.pem", "SMTPD_TLS_KEY": "/x.pem"}, "cannot load"),
        ({"SMTPD_USERS_FILE": "/nonexistent-users"}, "cannot read SMTPD_USERS_FILE"),
    ],
)
def test_bad_configuration_exits_78_with_one_line(env: dict[str, str], words: str) -> None:
    result = subprocess.run(
        smtpd_argv(), env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr.count("\n")) == (78, 1)
    assert words in result.stderr


def test_malformed_users_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# ok\nalice:plaintext-password\n")
    result = subprocess.run(
        smtpd_argv(),
        env={**os.environ, "SMTPD_USERS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78 and "line 2" in result.stderr
    assert "plaintext-password" not in result.stderr


def test_hash_password_command(tmp_path: Path) -> None:
    run = [*smtpd_argv(), "--hash-password"]
    bare = subprocess.run(run, input="s3cret\n", capture_output=True, text=True, check=True)
    encoded = bare.stdout.strip()
    assert encoded.startswith("scrypt$") and "s3cret" not in encoded
    assert smtpd.verify_password(b"s3cret", encoded)
    assert not smtpd.verify_password(b"s3cret ", encoded)
    again = subprocess.run(run, input="s3cret\n", capture_output=True, text=True, check=True)
    assert again.stdout.strip() != encoded  # salted
    empty = subprocess.run(run, input="\n", capture_output=True, text=True)
    assert empty.returncode == 64 and empty.stderr.count("\n") == 1
    bad_user = subprocess.run([*run, "a:b"], input="x\n", capture_output=True, text=True)
    assert bad_user.returncode == 64


# -- limits -----------------------------------------------------------------


def test_421_past_max_clients(daemons: list[Daemon], tmp_path: Path) -> None:
    d = start(daemons, tmp_path, SMTPD_MAX_CLIENTS="2")
    address = ("127.0.0.1", d.port)
    with connect(address) as first, connect(address) as second:
        assert first.reply()[0] == 220 and second.reply()[0] == 220
        with connect(address) as third:
            code, lines = third.reply()
            assert code == 421 and lines[0].startswith(b"421 4.7.0 ")
            assert third.reader.readline() == b""  # and hung up
        first.expect("QUIT", 221)
        assert first.reader.read() == b""  # closed, so no longer counted
    with connect(address) as again:
        assert again.reply()[0] == 220


def test_552_too_big_declared_and_undeclared(
    daemons: list[Daemon], tmp_path: Path, spool: Spool
) -> None:
    d = start(daemons, tmp_path, MAX_MESSAGE_SIZE="2k")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # smtplib sends SIZE=
            s.sendmail("dev@example.org", ["ops@example.org"], message("big", 4000))
        assert refused.value.smtp_code == 552
    with connect(("127.0.0.1", d.port)) as w:
        w.reply()
        w.expect("HELO client", 250)  # no SIZE= in plain SMTP
        w.expect("MAIL FROM:<dev@example.org>", 250)
        w.expect("RCPT TO:<ops@example.org>", 250)
        assert w.message(message("big", 4000)).startswith(b"552 5.3.4 ")
        w.expect("MAIL FROM:<dev@example.org>", 250)  # the session goes on
    assert maildrop_names(spool) == []


# -- lifecycle ---------------------------------------------------------------


def test_sigterm_exits_zero_and_says_421_to_open_sessions(
    daemons: list[Daemon], tmp_path: Path
) -> None:
    d = start(daemons, tmp_path)
    with connect(("127.0.0.1", d.port)) as w:
        w.reply()
        w.expect("EHLO client", 250)
        d.proc.send_signal(signal.SIGTERM)
        code, lines = w.reply()
        assert code == 421 and lines[0].startswith(b"421 4.3.2 ")
    assert d.proc.wait(timeout=15) == 0
    assert "Traceback" not in d.log_text()


def test_systemd_socket_activation(tmp_path: Path, spool: Spool) -> None:
    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, 3)

    env = {**os.environ, "LISTEN_FDS": "1", "SMTPD_LISTEN": "0.0.0.0:1"}  # ignored when activated
    log = tmp_path / "activated.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', *smtpd_argv()],
            env=env,
            pass_fds=(3,),
            preexec_fn=as_fd_3,
            stderr=err,
        )
    listener.close()  # the daemon has its own copy
    try:
        with smtplib.SMTP("::1", port, timeout=10) as s:
            assert s.sendmail("dev@example.org", ["ops@example.org"], message("activated")) == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(maildrop_names(spool)) == 1


# -- other clients -------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)"
)
def test_swaks_plain_over_starttls_and_login(
    daemons: list[Daemon],
    tmp_path: Path,
    spool: Spool,
    users_file: Path,
    tls_files: tuple[trustme.CA, Path, Path],
) -> None:
    _, cert, key = tls_files
    d = start(
        daemons,
        tmp_path,
        SMTPD_USERS_FILE=str(users_file),
        SMTPD_TLS_CERT=str(cert),
        SMTPD_TLS_KEY=str(key),
    )
    base = ["swaks", "--server", f"127.0.0.1:{d.port}", "--from", "dev@example.org"]
    runs = [
        ["--to", "a@example.org", "--tls", "--auth", "PLAIN"],
        ["--to", "b@example.org", "--auth", "LOGIN"],
    ]
    for extra in runs:
        result = subprocess.run(
            [*base, *extra, "--auth-user", "alice", "--auth-password", PASSWORD],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "250 2.0.0 Ok: queued as" in result.stdout
    recipients = sorted(read_record(spool, q)[0]["recipients"][0] for q in maildrop_names(spool))
    assert recipients == ["a@example.org", "b@example.org"]


@pytest.mark.skipif(
    importlib.util.find_spec("mssendmail.submission.sendmail") is None
    or importlib.util.find_spec("mssendmail.delivery.worker") is None,
    reason="needs mssendmail -t and mssendmail-worker",
)
def test_same_bytes_reach_the_transport_each_way(
    daemons: list[Daemon], tmp_path: Path, config_file: Path
) -> None:
    """-t, -bs and smtpd deliver byte-identical MIME, up to the Received: header."""
    original = (
        b"From: dev@example.org\r\nTo: ops@example.org\r\nCc: cc@example.org\r\n"
        b"Subject: same\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <same@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\n.leading dot\r\n8bit \xc3\xa4\r\n\r\nlast\r\n"
    )
    rcpts = ["ops@example.org", "cc@example.org"]
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "mssendmail"), "-t", "-i", "-f", "dev@example.org"],
        input=original,
        check=True,
        timeout=30,
    )
    stuffed = original.replace(b"\r\n.", b"\r\n..")
    session = b"HELO x\r\nMAIL FROM:<dev@example.org>\r\n"
    session += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
    session += b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n"
    bs = subprocess.run(bs_argv(), input=session, capture_output=True, check=True, timeout=30)
    assert b"queued as" in bs.stdout
    d = start(daemons, tmp_path)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.sendmail("dev@example.org", rcpts, original)
    subprocess.run(
        [str(bin_dir / "mssendmail-worker"), "--once", "--config", str(config_file)],
        check=True,
        timeout=30,
    )
    outbox = tmp_path / "outbox"
    delivered = sorted(p.read_bytes() for p in outbox.glob("*.eml"))
    assert len(delivered) == 3

    def without_received(mime: bytes) -> bytes:
        if b"Received: " not in mime:
            return mime
        start = mime.index(b"Received: ")
        return mime[:start] + split_received(mime[start:])[1]

    plain = [without_received(m) for m in delivered]
    assert plain[0] == plain[1] == plain[2]
    assert sum(m.count(b"Received: from ") for m in delivered) == 2


def test_third_failed_auth_closes_the_session(spool: Spool, users_file: Path) -> None:
    env = {"QUEUE_DIR": spool.root, "SMTPD_USERS_FILE": str(users_file)}
    daemon = smtpd.Daemon(smtpd.settings(load(environ=env), []))
    wrong = base64.b64encode(b"\0alice\0wrong").decode()
    with serving(daemon.factory(loopback=True)) as address, connect(address) as w:
        w.reply()
        w.expect("EHLO client", 250)
        w.expect(f"AUTH PLAIN {wrong}", 535)
        w.expect(f"AUTH PLAIN {wrong}", 535)
        w.line(f"AUTH PLAIN {wrong}")
        assert w.reply()[0] == 535
        code, lines = w.reply()
        assert code == 421 and lines[0].startswith(b"421 4.7.0 ")
        assert w.reader.readline() == b""


def test_log_lines_are_key_value_in_stderr_and_log_dir(
    daemons: list[Daemon], tmp_path: Path, spool: Spool
) -> None:
    """smtpd logs through logs.py, as the worker does: key=value, and to LOG_DIR too."""
    log_dir = tmp_path / "logs"
    d = start(daemons, tmp_path, LOG_DIR=str(log_dir))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        assert s.sendmail("dev@example.org", ["ops@example.org"], message("logged")) == {}
    assert d.stop() == 0
    [qid] = maildrop_names(spool)
    file_lines = (log_dir / "mssendmail.log").read_text().splitlines()
    pair = r'[a-z_]+=(?:"(?:[^"\\]|\\.)*"|\S+)'
    line_re = re.compile(rf"(?:DEBUG|INFO|WARNING|ERROR) {pair}(?: {pair})*")
    for line in file_lines:
        _when, _, rest = line.partition(" ")  # "2026-12-01T22:50:00.123+00:00 INFO event=..."
        assert line_re.fullmatch(rest), line
    assert any(f"event=queued id={qid} " in line for line in file_lines)
    assert any("event=listening" in line for line in file_lines)
    stderr = [line for line in d.log_text().splitlines() if line]
    # Off journald (JOURNAL_STREAM unset), stderr lines start with an ISO timestamp.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else r"\d{4}-\d\d-\d\dT\S+ "
    stderr_re = re.compile(stamp + line_re.pattern)
    assert stderr and all(stderr_re.fullmatch(line) for line in stderr), stderr
