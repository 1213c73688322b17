"""Checks of util/: shell scripts, systemd units, sysusers/tmpfiles/logrotate
snippets, the config template, and a real install.sh/uninstall.sh run (root).

External tools (shellcheck, systemd-analyze, systemd-tmpfiles, logrotate) are
used when installed and skipped with a reason otherwise; .ci/run installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssendmail import config
from mssendmail.spool import layout as spool
from tests.conftest import account_exists, note_created

REPO = Path(__file__).resolve().parent.parent
UTIL = REPO / "util"
SCRIPTS = ["install.sh", "uninstall.sh", "demo.sh", "build-man.sh"]
SERVICES = ["mssendmail-worker.service", "mssendmail-worker-once.service"]
UNITS = [*SERVICES, "mssendmail-worker.timer", "mssendmail-worker.path"]
QUEUE_DIR = config.DEFAULTS["QUEUE_DIR"]
STATE_DIR = os.path.dirname(QUEUE_DIR)  # /var/lib/mssendmail
LOG_DIR = "/var/log/mssendmail"
USER = spool.SERVICE_USER
IS_ROOT = os.geteuid() == 0


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it on Debian)")
    return path


def run(
    *args: str | Path,
    cwd: Path | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        input=input,
        env=env,
    )


def unit_entries(name: str) -> dict[str, list[str]]:
    """Section.Key -> values (units may repeat a key, e.g. SystemCallFilter=)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in (UTIL / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


def one(entries: dict[str, list[str]], key: str) -> str:
    values = entries.get(key)
    assert values and len(values) == 1, f"{key} should be set exactly once, got {values}"
    return values[0]


# --- shell scripts ---------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_with_bash_n(script: str) -> None:
    result = run("bash", "-n", UTIL / script)
    assert result.returncode == 0, result.stderr


def test_shellcheck_is_clean() -> None:
    shellcheck = need("shellcheck")
    result = run(shellcheck, "-x", *(UTIL / s for s in SCRIPTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("script", "flags"),
    [
        ("install.sh", ["--force", "--prefix", "--mandir", "--no-systemd", "--root", "--mode"]),
        ("uninstall.sh", ["--purge", "--prefix", "--mandir", "--root"]),
    ],
)
def test_help_documents_every_flag(script: str, flags: list[str]) -> None:
    result = run("bash", UTIL / script, "--help")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout
    assert "set -euo" not in result.stdout


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_unknown_option_is_usage_error(script: str) -> None:
    result = run("bash", UTIL / script, "--bogus")
    assert result.returncode == 64
    assert result.stderr.startswith(f"{script}: unknown")


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_refuses_to_run_unprivileged(script: str) -> None:
    prefix: list[str] = []
    if IS_ROOT:
        need("setpriv")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    result = run(*prefix, "bash", UTIL / script, "--root", "/nonexistent/mssendmail-test")
    assert result.returncode == 77, result.stderr
    assert result.stderr == f"{script}: must run as root; try: sudo {UTIL / script}\n"
    assert not os.path.exists("/nonexistent/mssendmail-test")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    """The README's first command: submit, run the worker once, show the .eml."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "mssendmail-worker").exists():
        pytest.skip("tests are not running from a venv with mssendmail installed")
    if not (_have("mssendmail.submission.sendmail") and _have("mssendmail.delivery.worker")):
        pytest.skip(
            "mssendmail.submission.sendmail or mssendmail.delivery.worker is not written yet"
        )
    env = {k: v for k, v in os.environ.items() if k not in config.DEFAULTS}
    env.update(VENV=str(venv), DEMO=str(tmp_path / "demo"), QUEUE_DIR="/nonexistent")
    result = run("bash", UTIL / "demo.sh", env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    delivered = list((tmp_path / "demo" / "outbox").glob("*.eml"))
    assert len(delivered) == 1
    assert result.stdout.endswith(delivered[0].read_text().replace("\r", ""))
    assert "X-Mssendmail-Mailbox: noreply@example.com" in result.stdout
    assert "Subject: Hello from mssendmail" in result.stdout
    assert 'From: "mssendmail demo" <noreply@example.com>' in result.stdout


# --- systemd units ---------------------------------------------------------

HARDENING = {
    "Service.User": USER,
    "Service.Group": USER,
    "Service.NoNewPrivileges": "yes",
    "Service.ProtectSystem": "strict",
    "Service.PrivateTmp": "yes",
    "Service.ProtectHome": "yes",
    "Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "Service.CapabilityBoundingSet": "",
    "Service.RestrictSUIDSGID": "yes",
    "Service.MemoryDenyWriteExecute": "yes",
}


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_hardened(name: str) -> None:
    entries = unit_entries(name)
    for key, value in HARDENING.items():
        assert one(entries, key) == value, key
    writable = one(entries, "Service.ReadWritePaths").split()
    assert STATE_DIR in writable
    assert LOG_DIR in [p.lstrip("-") for p in writable]
    # Settings that would break the worker (see the comments in the unit).
    for key in ("PrivateUsers", "PrivateNetwork", "IPAddressDeny"):
        assert f"Service.{key}" not in entries, key


def test_both_services_share_the_same_hardening() -> None:
    def sandbox(name: str) -> dict[str, list[str]]:
        skip = {"Type", "ExecStart", "ExecReload", "TimeoutStartSec", "TimeoutStopSec", "Restart"}
        return {
            k: v
            for k, v in unit_entries(name).items()
            if k.startswith("Service.") and not k.split(".")[1].startswith(tuple(skip))
        }

    assert sandbox(SERVICES[0]) == sandbox(SERVICES[1])


def test_units_run_the_worker_the_right_way() -> None:
    service = unit_entries("mssendmail-worker.service")
    once = unit_entries("mssendmail-worker-once.service")
    assert one(service, "Service.ExecStart") == "/usr/local/bin/mssendmail-worker"
    assert one(service, "Service.Restart") == "on-failure"
    assert one(service, "Service.RestartPreventExitStatus") == "78"
    assert one(service, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"  # SIGHUP: reload
    assert one(once, "Service.Type") == "oneshot"
    assert one(once, "Service.ExecStart") == "/usr/local/bin/mssendmail-worker --once"
    timer = unit_entries("mssendmail-worker.timer")
    assert one(timer, "Timer.Unit") == "mssendmail-worker-once.service"
    path = unit_entries("mssendmail-worker.path")
    assert one(path, "Path.Unit") == "mssendmail-worker-once.service"
    assert one(path, "Path.PathChanged") == os.path.join(QUEUE_DIR, spool.MAILDROP)


def _units_with_stub_worker(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at an existing file (verify checks it)."""
    stub = tmp_path / "mssendmail-worker"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for name in UNITS:
        text = (UTIL / name).read_text().replace("/usr/local/bin/mssendmail-worker", str(stub))
        (tmp_path / name).write_text(text)
        copies.append(tmp_path / name)
    return copies


def man_env(mandir: Path) -> dict[str, str]:
    """systemd-analyze verify runs man(1) on each Documentation=man: page."""
    return {**os.environ, "MANPATH": str(mandir)}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    mandir = tmp_path / "man"
    for page in (REPO / "man" / "build").glob("*.[0-9]"):
        (mandir / f"man{page.suffix[1:]}").mkdir(parents=True, exist_ok=True)
        shutil.copy(page, mandir / f"man{page.suffix[1:]}" / page.name)
    units = _units_with_stub_worker(tmp_path)
    result = run(analyze, "verify", *units, cwd=tmp_path, env=man_env(mandir))
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings: treat any as a failure.
    assert result.stderr.strip() == "", result.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    analyze = need("systemd-analyze")
    units = _units_with_stub_worker(tmp_path)
    text = units[0].read_text().replace("ProtectHome=yes", "ProtectHomme=yes")
    units[0].write_text(text)
    result = run(analyze, "verify", units[0], cwd=tmp_path)
    assert "ProtectHomme" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure_is_low(tmp_path: Path, name: str) -> None:
    analyze = need("systemd-analyze")
    units = _units_with_stub_worker(tmp_path)
    unit = units[UNITS.index(name)]
    result = run(analyze, "security", "--offline=true", "--no-pager", unit, cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score unit files offline: {result.stderr[:200]}")
    # 0 = fully locked down, 10 = unprotected; "OK" ends at 4.9. Ours is 1.2.
    assert float(match.group(1)) <= 2.0, result.stdout


# --- sysusers, tmpfiles, logrotate -----------------------------------------


def tmpfiles_entries() -> dict[str, tuple[str, int, str, str]]:
    """path -> (type, mode, user, group)."""
    entries = {}
    for line in (UTIL / "tmpfiles.d" / "mssendmail.conf").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, path, mode, user, group, *_ = line.split()
        assert path not in entries, f"{path} listed twice"
        entries[path] = (kind, int(mode, 8), user, group)
    return entries


def test_tmpfiles_matches_the_spool_layout() -> None:
    entries = tmpfiles_entries()
    owned = (USER, USER)
    assert entries.pop(QUEUE_DIR) == ("d", spool.ROOT_MODE, *owned)
    trigger = os.path.join(QUEUE_DIR, spool.TRIGGER)
    assert entries.pop(trigger) == ("p", spool.TRIGGER_MODE, *owned)
    assert entries.pop(LOG_DIR) == ("d", 0o750, *owned)
    assert entries.pop(STATE_DIR) == ("d", 0o755, "root", "root")
    expected = {os.path.join(QUEUE_DIR, a): ("d", m, *owned) for a, m in spool.DIR_MODES.items()}
    assert entries == expected


def test_sysusers_declares_the_service_user() -> None:
    lines = [
        line.split()
        for line in (UTIL / "sysusers.d" / "mssendmail.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    assert lines[0][:2] == ["u", USER]
    assert STATE_DIR in lines[0]
    assert lines[0][-1] == "/usr/sbin/nologin"


@pytest.mark.skipif(not IS_ROOT, reason="systemd-tmpfiles must run as root to chown")
def test_sysusers_and_tmpfiles_create_the_spool(tmp_path: Path) -> None:
    """Apply both snippets to an empty root, as systemd does at boot."""
    sysusers, tmpfiles = need("systemd-sysusers"), need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    result = run(sysusers, f"--root={tmp_path}", UTIL / "sysusers.d" / "mssendmail.conf")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "etc/passwd").read_text().splitlines()
    passwd = {fields[0]: fields for fields in (line.split(":") for line in lines)}
    uid, gid = int(passwd[USER][2]), int(passwd[USER][3])
    assert passwd[USER][6] == "/usr/sbin/nologin"
    conf = UTIL / "tmpfiles.d" / "mssendmail.conf"
    result = run(tmpfiles, "--create", f"--root={tmp_path}", conf)
    assert result.returncode == 0, result.stderr
    for path, (kind, mode, user, _group) in tmpfiles_entries().items():
        st = os.lstat(tmp_path / path.lstrip("/"))
        assert stat.S_IMODE(st.st_mode) == mode, path
        assert stat.S_ISFIFO(st.st_mode) if kind == "p" else stat.S_ISDIR(st.st_mode), path
        assert (st.st_uid, st.st_gid) == ((uid, gid) if user == USER else (0, 0)), path


def test_logrotate_snippet() -> None:
    text = (UTIL / "logrotate.d" / "mssendmail").read_text()
    assert f"{LOG_DIR}/*.log" in text
    assert re.search(rf"^\s*create 0640 {USER} {USER}$", text, re.M)
    assert "copytruncate" not in re.sub(r"#.*", "", text)


@pytest.mark.skipif(not IS_ROOT, reason="rotating as the mssendmail user needs root")
def test_logrotate_rotates_and_recreates_the_log() -> None:
    import pwd

    logrotate = need("logrotate")
    try:
        owner = pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"user {USER} does not exist (install.sh or systemd-sysusers creates it)")
    # Not under pytest's 0700 tmp: logrotate switches to the mssendmail user.
    work = Path(tempfile.mkdtemp(prefix="mssendmail-logrotate-", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        logs = work / "log"
        logs.mkdir(mode=0o750)
        os.chown(logs, owner.pw_uid, owner.pw_gid)
        log = logs / "mssendmail.log"
        log.write_text("id=1 outcome=sent\n")
        os.chown(log, owner.pw_uid, owner.pw_gid)
        conf = work / "mssendmail"
        conf.write_text(
            (UTIL / "logrotate.d" / "mssendmail").read_text().replace(LOG_DIR, str(logs))
        )
        result = run(logrotate, "--force", "-s", work / "state", conf)
        assert result.returncode == 0, result.stderr
        assert (logs / "mssendmail.log.1").read_text() == "id=1 outcome=sent\n"
        st = log.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
            0o640,
            owner.pw_uid,
            owner.pw_gid,
        )
        assert log.read_text() == ""
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- config template and docs ----------------------------------------------

ENV_LINE = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")


def template_keys() -> list[tuple[str, str]]:
    text = (UTIL / "mssendmail.env.example").read_text()
    return [(m[1], m[2]) for m in map(ENV_LINE.match, text.splitlines()) if m]


def test_env_template_lists_every_key_with_its_default() -> None:
    pairs = template_keys()
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a key is listed twice"
    assert set(keys) == set(config.DEFAULTS)
    for key, value in pairs:
        assert value == config.DEFAULTS[key], key


def test_env_template_explains_every_key() -> None:
    lines = (UTIL / "mssendmail.env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if match:
            above = lines[i - 1]
            assert above.startswith("# ") or ENV_LINE.match(above), f"{match[1]} has no comment"


def test_env_template_sets_nothing() -> None:
    """Installed as /etc/mssendmail/.env it must not change any default."""
    text = (UTIL / "mssendmail.env.example").read_text()
    assert config.parse_env_text(text) == ({}, [])  # and it parses


def doc_section(doc: str, name: str) -> str:
    """The text between <!-- section: NAME --> markers of REPO/doc."""
    text = (REPO / doc).read_text()
    match = re.search(rf"<!-- section: {name} -->(.*?)<!-- /section: {name} -->", text, re.S)
    assert match, f"{doc}: section {name} missing"
    return match.group(1)


def test_config_doc_table_matches_defaults() -> None:
    section = doc_section("docs/configuration.md", "config")
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", section, re.M)
    table = {key: default.strip() for key, default in rows}
    assert set(table) == set(config.DEFAULTS)
    for key, default in config.DEFAULTS.items():
        shown = table[key]
        assert shown == (f"`{default}`" if default else "(unset)"), key


def test_readme_quickstart_is_the_two_commands() -> None:
    block = re.search(r"```sh\n(.*?)```", doc_section("README.md", "quickstart"), re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["bash util/demo.sh", "bash .ci/run"]
    assert (REPO / ".ci" / "run").exists()


# --- install.sh as root, into a throwaway root -------------------------------

FAKE_MTA = "#!/bin/sh\necho another MTA\n"
FOREIGN_PAGE = ".TH MAILQ 1\n.SH NAME\nmailq \\- another MTA's page\n"
MANDIR = "/usr/local/share/man"
MAN_PAGES = sorted(p.name for p in (REPO / "man" / "build").glob("*.[0-9]"))


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.outputs: list[subprocess.CompletedProcess[str]] = []

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def install(self, *flags: str) -> subprocess.CompletedProcess[str]:
        had_user = account_exists(USER)
        result = run("bash", UTIL / "install.sh", "--root", self.root, *flags)
        note_created(USER, had_user)
        self.outputs.append(result)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """Two installs: one that meets another MTA, then one with --force."""
    if not IS_ROOT:
        pytest.skip("install.sh needs root")
    for tool in ("setpriv", "python3"):
        need(tool)
    # Not under pytest's 0700 tmp: nobody and mssendmail must reach the files.
    root = Path(tempfile.mkdtemp(prefix="mssendmail-install-", dir="/var/tmp"))
    root.chmod(0o755)
    inst = Installed(root)
    fake = inst.path("/usr/sbin/sendmail")
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_MTA)
    fake.chmod(0o755)
    foreign = inst.path(f"{MANDIR}/man1/mailq.1")
    foreign.parent.mkdir(parents=True)
    foreign.write_text(FOREIGN_PAGE)
    inst.install()
    # An admin's edit and a wrong mode: a re-run keeps the one, fixes the other.
    env = inst.path("/etc/mssendmail/.env")
    env.write_text(env.read_text() + "SENDER=admin-edit@example.com\n")
    env.chmod(0o644)
    inst.install("--force")
    yield inst
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_install_says_which_python_and_why(installed: Installed) -> None:
    out = installed.outputs[0].stdout
    assert re.search(r"^install\.sh: using Python 3\.\d+\.\d+\S* at /\S+: \S", out, re.M), out


@pytest.mark.slow  # installs twice with /usr/bin/python3 whatever runs pytest: once is enough
def test_install_leaves_another_mta_alone_without_force(installed: Installed) -> None:
    first = installed.outputs[0]
    assert "/usr/sbin/sendmail belongs to another MTA" in first.stderr
    assert "--force" in first.stderr


@pytest.mark.slow
def test_install_with_force_moves_the_other_mta_aside(installed: Installed) -> None:
    aside = installed.path("/usr/sbin/sendmail.pre-mssendmail")
    assert aside.read_text() == FAKE_MTA
    venv_sendmail = installed.path("/opt/mssendmail/venv/bin/mssendmail")
    for mta in ("/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases"):
        assert installed.path(mta).resolve() == venv_sendmail.resolve(), mta
    # Debian maintainer scripts run newaliases (issue 13 finding 7): it must exist and exit 0.
    ran = run(installed.path("/usr/bin/newaliases"))
    assert ran.returncode == 0 and ran.stdout == ran.stderr == "", ran
    # The service account has no home under /home, whoever created it first.
    assert not __import__("pwd").getpwnam(USER).pw_dir.startswith("/home/")
    for name in ("mssendmail", "mssendmail-worker", "mssendmail-queue", "mssendmail-smtpd"):
        link = installed.path(f"/usr/local/bin/{name}")
        assert link.is_symlink() and link.resolve().exists(), name


@pytest.mark.slow
def test_install_puts_the_man_pages_where_man_finds_them(installed: Installed) -> None:
    assert len(MAN_PAGES) == 6
    mandir = installed.path(MANDIR)
    for name in MAN_PAGES:
        shipped = mandir / f"man{name[-1]}" / name
        assert shipped.read_text() == (REPO / "man" / "build" / name).read_text(), name
        assert stat.S_IMODE(shipped.stat().st_mode) == 0o644
    # Once sendmail is ours (the --force run), man sendmail shows our page;
    # another MTA's page is left alone.
    assert (mandir / "man8/sendmail.8").read_text() == ".so man8/mssendmail.8\n"
    assert (mandir / "man8/newaliases.8").read_text() == ".so man8/mssendmail.8\n"
    assert (mandir / "man1/mailq.1").read_text() == FOREIGN_PAGE
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    for page, needle in (("mssendmail-queue", "look at and manage"), ("sendmail", "mssendmail")):
        shown = run(man, "-M", mandir, "-P", "cat", page, env={**os.environ, "MANWIDTH": "80"})
        assert shown.returncode == 0, shown.stderr
        assert needle in shown.stdout, page


@pytest.mark.slow
def test_install_creates_the_spool_and_config_with_the_right_modes(installed: Installed) -> None:
    import grp
    import pwd

    uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(USER).gr_gid
    for path, (kind, mode, user, _group) in tmpfiles_entries().items():
        st = os.lstat(installed.path(path))
        assert stat.S_IMODE(st.st_mode) == mode, path
        assert stat.S_ISFIFO(st.st_mode) if kind == "p" else stat.S_ISDIR(st.st_mode), path
        assert (st.st_uid, st.st_gid) == ((uid, gid) if user == USER else (0, 0)), path
    env = installed.path("/etc/mssendmail/.env")
    st = env.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid)
    assert "SENDER=admin-edit@example.com" in env.read_text(), "re-run overwrote the config"
    assert "kept existing" in installed.outputs[1].stdout
    assert "reset" in installed.outputs[1].stdout


@pytest.mark.slow
def test_installed_units_verify(installed: Installed) -> None:
    analyze = need("systemd-analyze")
    units = [installed.path(f"/etc/systemd/system/{u}") for u in UNITS]
    text = units[0].read_text()
    assert f"ExecStart={installed.path('/usr/local/bin/mssendmail-worker')}" in text
    result = run(analyze, "verify", *units, cwd=installed.root, env=man_env(installed.path(MANDIR)))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.slow
def test_installed_sendmail_queues_for_nobody_and_worker_delivers(installed: Installed) -> None:
    """A non-root user's sendmail -t queues; the worker, as mssendmail, delivers."""
    if not (_have("mssendmail.submission.sendmail") and _have("mssendmail.delivery.worker")):
        pytest.skip(
            "mssendmail.submission.sendmail or mssendmail.delivery.worker is not written yet"
        )
    queue = installed.path(QUEUE_DIR)
    outbox = installed.path(STATE_DIR) / "outbox"
    outbox.mkdir(exist_ok=True)
    shutil.chown(outbox, USER, USER)
    env_file = installed.path("/etc/mssendmail/.env")
    env_file.write_text(
        env_file.read_text() + f"TRANSPORT=file\nOUTBOX_DIR={outbox}\nSENDER=relay@example.com\n"
    )
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    # The submitter cannot read the secrets; it finds the spool through QUEUE_DIR.
    assert run(*nobody, "cat", env_file).returncode != 0
    message = "To: alice@example.com\nSubject: installed pipeline\n\nhello\n"
    submit = run(
        *nobody,
        "env",
        "-i",
        f"QUEUE_DIR={queue}",
        f"MSSENDMAIL_CONFIG={env_file}",
        installed.path("/usr/sbin/sendmail"),
        "-t",
        input=message,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    assert submit.stdout == ""
    worker = run(
        "setpriv",
        f"--reuid={USER}",
        f"--regid={USER}",
        "--init-groups",
        "env",
        "-i",
        f"MSSENDMAIL_CONFIG={env_file}",
        installed.path("/usr/local/bin/mssendmail-worker"),
        "--once",
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    delivered = list(outbox.glob("*.eml"))
    assert len(delivered) == 1
    assert "Subject: installed pipeline" in delivered[0].read_text()
    assert delivered[0].stat().st_uid == __import__("pwd").getpwnam(USER).pw_uid


@pytest.mark.slow
def test_uninstall_keeps_the_spool_then_purge_removes_it(installed: Installed) -> None:
    """Runs last in this module: it takes down what the fixture installed."""
    marker = installed.path(QUEUE_DIR) / spool.HOLD / "0000000000000000aa"
    marker.write_text("held mail\n")
    result = run("bash", UTIL / "uninstall.sh", "--root", installed.root)
    assert result.returncode == 0, result.stderr
    assert not installed.path("/opt/mssendmail/venv").exists()
    assert not installed.path("/usr/local/bin/mssendmail").is_symlink()
    assert not installed.path("/etc/systemd/system/mssendmail-worker.service").exists()
    assert installed.path("/usr/sbin/sendmail").read_text() == FAKE_MTA, "MTA not restored"
    assert not installed.path("/usr/bin/mailq").is_symlink()
    left = sorted(p.name for p in installed.path(MANDIR).rglob("*") if p.is_file())
    assert left == ["mailq.1"], "uninstall left man pages behind, or removed another MTA's"
    assert marker.read_text() == "held mail\n"
    assert installed.path("/etc/mssendmail/.env").exists()
    assert "1 undelivered" in result.stdout
    again = run("bash", UTIL / "uninstall.sh", "--root", installed.root)
    assert again.returncode == 0, again.stderr
    purge = run("bash", UTIL / "uninstall.sh", "--root", installed.root, "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not installed.path(STATE_DIR).exists()
    assert not installed.path("/etc/mssendmail").exists()
    assert installed.path("/usr/sbin/sendmail").read_text() == FAKE_MTA
