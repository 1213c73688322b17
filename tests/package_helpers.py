"""Building the packages and running them in a scratch Debian 12 root.

Used by tests/test_packages.py and bench/packages.py. Everything here needs
root: mmdebstrap builds the root (from the Debian mirror this machine's apt
uses), chroot(8) runs commands in it. systemd does not run in a chroot, so
the maintainer scripts record unit enablement and the worker is started by
hand; the chroot shares the network namespace, so the fake Graph on
127.0.0.1 is reachable from inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "util" / "build-packages.sh"
SUITE = "bookworm"
# exim4 first, so installing the .deb must swap it out; systemd for
# systemd-sysusers and deb-systemd-helper's recorded state, as on a server.
BASE_PACKAGES = ["python3", "systemd", "exim4-daemon-light", "init-system-helpers", "passwd"]
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_tools(*tools: str) -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (chroot, mmdebstrap, package installs)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it: apt-get install {tool})"
    return None


@dataclass
class Built:
    deb: Path
    rpm: Path | None
    version: str


def build(out: Path, version: str | None = None, only: str | None = None) -> Built:
    """Run util/build-packages.sh into out; the paths of what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    args = [str(BUILD), "--out", str(out)]
    if version:
        args += ["--version", version]
    if only:
        args += ["--only", only]
    before = set(out.iterdir())
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    new = set(out.iterdir()) - before
    debs = [p for p in new if p.suffix == ".deb"]
    rpms = [p for p in new if p.suffix == ".rpm"]
    assert len(debs) == 1, (sorted(new), result.stdout)
    name = debs[0].name  # mssendmail_VERSION-RELEASE_ARCH.deb
    return Built(debs[0], rpms[0] if rpms else None, name.split("_")[1].rsplit("-", 1)[0])


def host_sources() -> str | None:
    """This machine's Debian 12 apt sources (deb822 or one-line), for the chroot."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if SUITE in text and "debian" in text:
            return text
    return None


def make_base(tarball: Path) -> None:
    """A clean Debian 12 root as a tarball (copies are cheap to unpack)."""
    sources = host_sources()
    args = ["mmdebstrap", "--quiet", "--variant=apt", "--include=" + ",".join(BASE_PACKAGES)]
    args += [SUITE, str(tarball)]
    if sources is not None:
        args.append("-")  # read the mirror list from stdin, as the host has it
    result = subprocess.run(args, input=sources, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"mmdebstrap failed: {result.stderr[-3000:]}"


class Root:
    """A scratch root unpacked from the base tarball; commands run chrooted."""

    def __init__(self, path: Path, base: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        with tarfile.open(base) as tar:
            tar.extractall(path, filter="fully_trusted")

    def file(self, inside: str) -> Path:
        return self.path / inside.lstrip("/")

    def run(
        self,
        *args: str,
        user: str | None = None,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run args in the root (as user, when given) with a clean environment."""
        argv = self.argv(*args, user=user, env=env)
        data = input.encode() if isinstance(input, str) else input
        result = subprocess.run(argv, input=data, capture_output=True, timeout=timeout, check=False)
        return subprocess.CompletedProcess(
            argv,
            result.returncode,
            result.stdout.decode("utf-8", "replace"),
            result.stderr.decode("utf-8", "replace"),
        )

    def argv(
        self, *args: str, user: str | None = None, env: dict[str, str] | None = None
    ) -> list[str]:
        environment = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        environment.update(env or {})
        prefix = ["chroot", str(self.path)]
        if user is not None:
            # setpriv execs: the process started is the command itself (signals reach it).
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
            environment["HOME"] = "/"
        return [*prefix, "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *args]

    def ok(self, *args: str, **kwargs: object) -> str:
        result = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, (
            f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "apt-get",
            "-y",
            "-q",
            "-o",
            "Dpkg::Use-Pty=0",
            *args,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )

    def stat(self, inside: str) -> str:
        """'MODE USER GROUP' as the root's own user database names them."""
        return self.ok("stat", "-c", "%a %U %G", inside).strip()

    def package_status(self, name: str) -> str:
        result = self.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", name)
        return result.stdout.strip() if result.returncode == 0 else ""
