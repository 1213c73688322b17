"""The .deb and .rpm from util/build-packages.sh, installed for real (issue 18).

The .deb goes through its whole life in a clean Debian 12 root made by
mmdebstrap: installed with apt over exim4 (which apt must remove), configured
against the local fake Graph, used by an unprivileged user through
/usr/sbin/sendmail, upgraded to a rebuilt higher version with 100 messages
queued (a worker is stopped mid-queue as prerm would, and each message is
delivered exactly once), removed (config and spool stay), purged (the config
goes; the spool only once it is empty). The .rpm is checked with rpm -qp and
rpmlint, and installed with `rpm --root` into another scratch root.

Root only, and slow (about 4 minutes, most of it the two package builds;
the timings are in bench/RESULTS.md, "Packages").
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from tests.fakegraph import FakeGraph
from tests.package_helpers import REPO, Built, Root, build, make_base, missing_tools

pytestmark = [pytest.mark.root, pytest.mark.slow]

WHY_NOT = missing_tools("mmdebstrap", "chroot", "setpriv")
needs_root = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
SENDER = "relay@contoso.example"
WORKER_ENV = {"REQUESTS_CA_BUNDLE": "/etc/mssendmail/fake-ca.pem"}
UNITS = "/usr/lib/systemd/system"
WANTS = "/etc/systemd/system/multi-user.target.wants/mssendmail-worker.service"
DSH_STATE = "/var/lib/systemd/deb-systemd-helper-enabled"
MAILDROP = "/var/lib/mssendmail/queue/maildrop"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, Built]:
    """Version N (deb + rpm) and a rebuilt N.1 (deb) of this checkout."""
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    out = tmp_path_factory.mktemp("dist")
    reuse = os.environ.get("MSSENDMAIL_TEST_REUSE_DIST")
    if reuse:  # development only: the packages an earlier run left in that directory
        return reused(Path(reuse))
    first = build(out)
    second = build(out, version=first.version + ".1", only="deb")
    return first, second


def reused(directory: Path) -> tuple[Built, Built]:
    debs = sorted(directory.glob("mssendmail_*.deb"))
    rpms = sorted(directory.glob("mssendmail-*.rpm"))
    assert len(debs) == 2 and rpms, f"{directory} must hold the two .debs and an .rpm"
    built = [Built(d, rpms[0], d.name.split("_")[1].rsplit("-", 1)[0]) for d in debs]
    return built[0], built[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    tarball = tmp_path_factory.mktemp("base") / "bookworm.tar"
    make_base(tarball)
    return tarball


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGraph]:
    server = FakeGraph(tmp_path_factory.mktemp("fake")).start()
    yield server
    server.stop()


def message(subject: str, to: str = "bob@example.org") -> str:
    return f"From: alice@contoso.example\nTo: {to}\nSubject: {subject}\n\nbody of {subject}\n"


def subjects(fake: FakeGraph) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for received in fake.messages:
        assert received.mime is not None
        out[str(message_from_bytes(received.mime)["Subject"])] += 1
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def maildrop_count(root: Root) -> int:
    return sum(1 for p in root.file(MAILDROP).iterdir() if p.is_file())


def install(root: Root, deb: Path) -> subprocess.CompletedProcess[str]:
    root.file(f"/tmp/{deb.name}").write_bytes(deb.read_bytes())
    return root.apt("install", f"/tmp/{deb.name}")


@needs_root
def test_deb_lifecycle(
    packages: tuple[Built, Built], base: Path, fake: FakeGraph, tmp_path: Path
) -> None:
    first, second = packages
    root = Root(tmp_path / "root", base)
    assert root.package_status("exim4-daemon-light").startswith("ii")

    # 1. apt swaps exim4 out: Provides/Conflicts/Replaces mail-transport-agent.
    result = install(root, first.deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Removing exim4-daemon-light" in result.stdout
    assert not root.package_status("exim4-daemon-light").startswith("ii")
    assert root.package_status("mssendmail") == f"ii {first.version}-1"
    for link in (
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/sbin/newaliases",
        "/usr/bin/mailq",
    ):
        assert root.ok("readlink", "-f", link).strip() == "/usr/bin/mssendmail", link
        assert root.ok("sh", "-c", f"command -v {link.rsplit('/', 1)[1]}").strip()
    root.ok("newaliases")  # Debian's maintainer scripts call it
    # The submission launcher skips site.py (-S) and adds the venv's
    # site-packages itself, which is only right while no wheel ships a .pth.
    assert (
        root.file("/usr/bin/mssendmail")
        .read_text()
        .startswith("#!/usr/lib/mssendmail/venv/bin/python -IS\n")
    )
    for name in ("mssendmail-worker", "mssendmail-queue", "mssendmail-smtpd"):
        assert (
            root.file(f"/usr/bin/{name}")
            .read_text()
            .startswith("#!/usr/lib/mssendmail/venv/bin/python -I\n")
        ), name
    site_packages = root.ok(
        "/usr/lib/mssendmail/venv/bin/python",
        "-I",
        "-c",
        "import site; print(site.getsitepackages()[0])",
    ).strip()
    assert site_packages.startswith("/usr/lib/mssendmail/venv/lib/python3.")
    assert not list(root.file(site_packages).glob("*.pth"))
    assert root.ok("sh", "-c", "mailq; echo exit=$?").strip().endswith("exit=0")

    # Modes as the README documents them; the user came from sysusers.d.
    assert root.stat("/etc/mssendmail") == "750 root mssendmail"
    assert root.stat("/etc/mssendmail/.env") == "640 root mssendmail"
    assert root.stat("/etc/mssendmail/mssendmail.env.example") == "644 root root"
    assert root.stat(MAILDROP) == "3773 mssendmail mssendmail"
    assert root.stat("/var/lib/mssendmail/queue/deferred") == "2770 mssendmail mssendmail"
    assert root.stat("/var/lib/mssendmail/queue/trigger") == "622 mssendmail mssendmail"
    assert root.stat("/var/log/mssendmail") == "750 mssendmail mssendmail"
    assert "/usr/sbin/nologin" in root.ok("getent", "passwd", "mssendmail")
    conffiles = root.ok("cat", "/var/lib/dpkg/info/mssendmail.conffiles").split()
    assert "/etc/mssendmail/.env" in conffiles

    # Units: the worker enabled through deb-systemd-helper, the rest not.
    assert root.ok("readlink", WANTS).strip().endswith("/mssendmail-worker.service")
    assert root.file(DSH_STATE).joinpath("mssendmail-worker.service.dsh-also").is_file()
    helper = root.run(
        "deb-systemd-helper",
        "is-enabled",
        "mssendmail-worker.service",
        env={"DPKG_MAINTSCRIPT_PACKAGE": "mssendmail"},
    )
    assert helper.returncode == 0, helper.stderr
    assert not root.file("/etc/systemd/system/timers.target.wants/mssendmail-worker.timer").exists()
    for name in ("mssendmail-worker.service", "mssendmail-worker-once.service"):
        unit = root.file(f"{UNITS}/{name}").read_text()
        assert "ExecCondition=/usr/lib/mssendmail/configured\nExecStart=/usr/bin/" in unit

    # Not configured yet: the ExecCondition skips the start (exit 1, not a
    # failure), and the worker itself would exit 78, which is not restarted.
    skipped = root.run("/usr/lib/mssendmail/configured", user="mssendmail")
    assert skipped.returncode == 1 and "no credential" in skipped.stdout
    unconfigured = root.run("/usr/bin/mssendmail-worker", "--once", user="mssendmail")
    assert unconfigured.returncode == 78, unconfigured.stderr
    assert (
        "RestartPreventExitStatus=78" in root.file(f"{UNITS}/mssendmail-worker.service").read_text()
    )

    # 2. configure against the fake Graph.
    root.file("/etc/mssendmail/fake-ca.pem").write_bytes(Path(fake.ca_path).read_bytes())
    env_file = root.file("/etc/mssendmail/.env")
    with env_file.open("a") as fh:
        fh.write(fake.config_text() + f"SENDER={SENDER}\nRETRY_MIN=1s\nRETRY_MAX=2s\n")
    assert root.run("/usr/lib/mssendmail/configured", user="mssendmail").returncode == 0

    # 3. an unprivileged user submits; the worker (started by hand) delivers.
    root.ok("useradd", "--create-home", "alice")
    sent = root.run(
        "/usr/sbin/sendmail", "-t", "-i", user="alice", input=message("hello from a package")
    )
    assert (sent.returncode, sent.stdout, sent.stderr) == (0, "", "")
    assert root.stat("/etc/mssendmail/.env").startswith("640")
    assert root.run("cat", "/etc/mssendmail/.env", user="alice").returncode != 0
    root.ok("/usr/bin/mssendmail-worker", "--once", user="mssendmail", env=WORKER_ENV)
    fake.wait_for_messages(1, timeout=30)
    assert subjects(fake) == {"hello from a package": 1}
    assert fake.messages[0].mailbox == SENDER

    # 4. upgrade with 100 messages queued. A worker is delivering when the
    # upgrade comes; it gets SIGTERM first, as prerm's `deb-systemd-invoke
    # stop` sends it, and the new version's worker delivers the rest.
    submit_100 = (
        "for i in $(seq 1 100); do printf 'From: alice@contoso.example\\nTo: bob@example.org\\n"
        'Subject: bulk %s\\n\\nbody\\n\' "$i" | /usr/sbin/sendmail -t -i || exit 1; done'
    )
    root.ok("sh", "-c", submit_100, user="alice")
    assert maildrop_count(root) == 100
    env_before = sha256(env_file)
    venv_before = root.ok("readlink", "/usr/lib/mssendmail/venv").strip()
    fake.latency = 0.05
    worker = subprocess.Popen(
        root.argv("/usr/bin/mssendmail-worker", user="mssendmail", env=WORKER_ENV),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while fake.accepted < 11 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.accepted >= 11, "the worker delivered nothing within 60 s"
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
    fake.latency = 0.0
    before_upgrade = fake.accepted
    assert before_upgrade < 101, "the worker drained everything before it was stopped"

    result = install(root, second.deb)
    assert result.returncode == 0, result.stdout + result.stderr
    assert root.package_status("mssendmail") == f"ii {second.version}-1"
    assert sha256(env_file) == env_before, "the upgrade changed the admin's .env"
    assert "Configuration file '/etc/mssendmail/.env'" not in result.stdout  # never asked
    venv_after = root.ok("readlink", "/usr/lib/mssendmail/venv").strip()
    assert (
        venv_after != venv_before and not root.file(f"/usr/lib/mssendmail/{venv_before}").exists()
    )
    version = root.ok("/usr/bin/mssendmail-worker", "--version", user="mssendmail").strip()
    assert version == second.version
    assert root.file(WANTS).is_symlink(), "the upgrade lost the worker's enablement"
    for _ in range(5):
        root.ok("/usr/bin/mssendmail-worker", "--once", user="mssendmail", env=WORKER_ENV)
        if fake.accepted >= 101:
            break
    counts = subjects(fake)
    bulk = {s: n for s, n in counts.items() if s.startswith("bulk ")}
    assert sorted(bulk) == sorted(f"bulk {i}" for i in range(1, 101))
    assert set(bulk.values()) == {1}, {s: n for s, n in bulk.items() if n != 1}
    assert fake.accepted == 101

    # 5. remove: config, spool and queued mail stay; the programs go.
    sent = root.run("/usr/sbin/sendmail", "-t", "-i", user="alice", input=message("left queued"))
    assert sent.returncode == 0, sent.stderr
    result = root.apt("remove", "mssendmail")
    assert result.returncode == 0, result.stdout + result.stderr
    assert root.package_status("mssendmail").startswith("rc")
    assert sha256(env_file) == env_before
    assert maildrop_count(root) == 1
    assert not root.file("/usr/sbin/sendmail").exists()
    assert not root.file("/usr/lib/mssendmail").exists(), "the venv outlived the package"

    # 6. purge: the config goes; the spool stays while it holds mail, and
    # the purge says so.
    result = root.apt("purge", "mssendmail")
    assert result.returncode == 0, result.stdout + result.stderr
    assert root.package_status("mssendmail") == ""
    assert not root.file("/etc/mssendmail").exists()
    assert not root.file(WANTS).exists()
    assert "kept the spool /var/lib/mssendmail" in result.stdout + result.stderr
    assert maildrop_count(root) == 1

    # Reinstalled over that spool and purged once it is empty: all gone.
    for leftover in root.file(MAILDROP).iterdir():
        leftover.unlink()
    result = install(root, second.deb)
    assert result.returncode == 0, result.stdout + result.stderr
    result = root.apt("purge", "mssendmail")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not root.file("/var/lib/mssendmail").exists()
    assert not root.file("/var/log/mssendmail").exists()


# -- rpm ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpm_file(packages: tuple[Built, Built]) -> Path:
    if missing_tools("rpm") is not None:
        pytest.skip(missing_tools("rpm") or "")
    assert packages[0].rpm is not None
    return packages[0].rpm


def rpm_query(path: Path, *args: str) -> str:
    result = subprocess.run(["rpm", "-qp", *args, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_root
def test_rpm_relations_and_scripts(rpm_file: Path) -> None:
    provides = rpm_query(rpm_file, "--provides").split("\n")
    assert {"MTA", "smtpdaemon", "server(smtp)"} <= set(provides)
    requires = rpm_query(rpm_file, "--requires")
    assert re.search(r"^\(?python3 >= 3\.\d+", requires, re.M), requires
    assert "/usr/sbin/alternatives" in requires and "shadow-utils" in requires
    scripts = " ".join(rpm_query(rpm_file, "--scripts").replace("\\\n", " ").split())
    assert "alternatives --install /usr/sbin/sendmail mta /usr/sbin/sendmail.mssendmail" in scripts
    for slave in (
        "/usr/lib/sendmail mta-sendmail",
        "/usr/bin/mailq mta-mailq",
        "/usr/bin/newaliases",
    ):
        assert f"--slave {slave}" in scripts, slave
    assert "alternatives --remove mta /usr/sbin/sendmail.mssendmail" in scripts
    assert "systemd-update-helper install-system-units mssendmail-worker.service" in scripts
    assert "systemd-update-helper remove-system-units" in scripts
    assert "systemd-sysusers" in scripts and "useradd --system" in scripts
    files = rpm_query(
        rpm_file, "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]"
    )
    assert "-rw-r----- root mssendmail /etc/mssendmail/.env\n" in files
    flags = rpm_query(rpm_file, "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    assert "cn /etc/mssendmail/.env\n" in flags  # %config(noreplace)
    assert "c /etc/mssendmail/mssendmail.env.example\n" in flags


@needs_root
def test_rpmlint_has_no_errors_and_only_explained_warnings(rpm_file: Path) -> None:
    if missing_tools("rpmlint") is not None:
        pytest.skip(missing_tools("rpmlint") or "")
    rc_file = REPO / "packaging" / "mssendmail.rpmlintrc"
    result = subprocess.run(
        ["rpmlint", "-r", str(rc_file), str(rpm_file)], capture_output=True, text=True
    )
    out = result.stdout + result.stderr
    assert " 0 errors" in out, out
    assert not re.search(r"^\S+: E: ", out, re.M), out
    explained = set(re.findall(r"^# W: (\S+)", rc_file.read_text(), re.M))
    warnings = set(re.findall(r"^\S+: W: (\S+)", out, re.M))
    assert warnings <= explained, f"unexplained rpmlint warnings: {warnings - explained}"


@needs_root
def test_rpm_installs_into_a_scratch_root(rpm_file: Path, base: Path, tmp_path: Path) -> None:
    root = Root(tmp_path / "rpmroot", base)
    # RHEL's alternatives(8) takes the same --install/--remove arguments as
    # Debian's update-alternatives, which this root has.
    shim = root.file("/usr/sbin/alternatives")
    shim.write_text('#!/bin/sh\nexec update-alternatives "$@"\n')
    shim.chmod(0o755)
    root.ok(
        "rm",
        "-f",
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/bin/mailq",
        "/usr/sbin/newaliases",
    )
    subprocess.run(["rpm", "--root", str(root.path), "--initdb"], check=True)
    result = subprocess.run(
        ["rpm", "--root", str(root.path), "-i", "--nodeps", str(rpm_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for link in (
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/bin/mailq",
        "/usr/bin/newaliases",
    ):
        assert root.ok("readlink", "-f", link).strip() == "/usr/bin/mssendmail", link
    assert root.ok("readlink", "/etc/alternatives/mta").strip() == "/usr/sbin/sendmail.mssendmail"
    assert root.stat("/etc/mssendmail/.env") == "640 root mssendmail"
    assert root.stat(MAILDROP) == "3773 mssendmail mssendmail"
    root.ok("useradd", "--create-home", "alice")
    sent = root.run("/usr/sbin/sendmail", "-t", "-i", user="alice", input=message("via rpm"))
    assert sent.returncode == 0, sent.stderr
    assert maildrop_count(root) == 1

    result = subprocess.run(
        ["rpm", "--root", str(root.path), "-e", "--nodeps", "mssendmail"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not root.file("/etc/alternatives/mta").exists()
    assert not root.file("/usr/lib/mssendmail/venv").exists()
    assert maildrop_count(root) == 1, "rpm -e must keep the queued mail"
