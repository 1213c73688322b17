"""Fast checks of util/build-packages.sh and packaging/ (no build, no root).

The packages themselves are built and installed by tests/test_packages.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "util" / "build-packages.sh"
PACKAGING = REPO / "packaging"
sys.path.insert(0, str(PACKAGING))
import nfpm_config  # noqa: E402


def test_help_documents_every_flag() -> None:
    result = subprocess.run(["bash", str(BUILD), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for flag in ("--version", "--release", "--arch", "--out", "--only", "NFPM"):
        assert flag in result.stdout
    assert "set -euo" not in result.stdout


@pytest.mark.parametrize(
    "args", [["--bogus"], ["--arch", "sparc"], ["--only", "apk"], ["--version", "v1"]]
)
def test_bad_usage_exits_64(args: list[str]) -> None:
    result = subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True)
    assert result.returncode == 64, result.stderr
    assert result.stderr.startswith("build-packages.sh: ")
    assert result.stderr.count("\n") == 1


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it on Debian)")
    result = subprocess.run([shellcheck, str(BUILD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    scripts = [PACKAGING / "package-setup.sh", *sorted((PACKAGING / "scripts").iterdir())]
    result = subprocess.run([shellcheck, "-s", "sh", *map(str, scripts)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode()


def test_python_requirement_follows_requires_python() -> None:
    assert nfpm_config.python_requirements("3.11") == (
        "python3 (>= 3.11)",
        "(python3 >= 3.11 or python3.11 or python3.12)",
    )
    assert nfpm_config.python_requirements("3.9") == ("python3 (>= 3.9)", "python3 >= 3.9")


def config_for(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "root"
    for name in ("etc/mssendmail/.env", "usr/bin/mssendmail", "usr/share/doc/mssendmail/README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    out = subprocess.run(
        [
            sys.executable,
            str(PACKAGING / "nfpm_config.py"),
            "--root",
            str(root),
            "--scripts",
            str(PACKAGING / "scripts"),
            "--version",
            "1.2.3",
            "--release",
            "4",
            "--arch",
            "amd64",
            "--python-min",
            "3.11",
            "--changelog",
            str(tmp_path / "changelog.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config: dict[str, Any] = json.loads(out)
    return config


def test_deb_relations_are_nullmailers(tmp_path: Path) -> None:
    deb = config_for(tmp_path)["overrides"]["deb"]
    for relation in ("provides", "conflicts", "replaces"):
        assert deb[relation] == ["mail-transport-agent"], relation
    assert "python3 (>= 3.11)" in deb["depends"]


def test_rpm_relations_are_rhel_mtas(tmp_path: Path) -> None:
    rpm = config_for(tmp_path)["overrides"]["rpm"]
    assert rpm["provides"] == ["MTA", "smtpdaemon", "server(smtp)"]
    assert "/usr/sbin/alternatives" in rpm["depends"]


def test_env_is_a_private_conffile_and_links_differ_by_format(tmp_path: Path) -> None:
    entries = {(e["dst"], e.get("packager")): e for e in config_for(tmp_path)["contents"]}
    env = entries[("/etc/mssendmail/.env", None)]
    assert env["type"] == "config|noreplace"
    assert env["file_info"] == {"mode": 0o640, "owner": "root", "group": "mssendmail"}
    for link in (
        "/usr/sbin/sendmail",
        "/usr/lib/sendmail",
        "/usr/sbin/newaliases",
        "/usr/bin/mailq",
    ):
        assert entries[(link, "deb")]["type"] == "symlink"
        assert (link, "rpm") not in entries  # alternatives(8) owns them there
        assert entries[(link + ".mssendmail", "rpm")]["type"] == "symlink"


@pytest.mark.parametrize(
    ("settings", "ready"),
    [
        ("", False),
        ("TENANT_ID=t\nCLIENT_ID=c\n", False),
        ("CLIENT_SECRET=s\n", True),
        ("MANAGED_IDENTITY=system\n", True),
        ("TRANSPORT=file\nOUTBOX_DIR=/tmp\n", True),
    ],
)
def test_configured_condition(tmp_path: Path, settings: str, ready: bool) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# a fresh install's file\n" + settings)
    env = {k: v for k, v in os.environ.items() if k == "PATH"}
    env["MSSENDMAIL_CONFIG"] = str(env_file)
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "configured.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == (0 if ready else 1), result.stdout + result.stderr
    assert ("no credential" in result.stdout) is not ready
