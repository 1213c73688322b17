"""Write the nfpm config (JSON, which nfpm reads as YAML) for a staged tree.

Called by util/build-packages.sh. Every file under --root goes in both
packages with its mode; the config files, the MTA links and the package
relations differ between the .deb and the .rpm and are set here.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

NAME = "mssendmail"
MAINTAINER = "mssendmail developers <mssendmail@localhost>"
SUMMARY = "Sendmail drop-in that delivers mail through Microsoft Graph"
# Config files: dpkg conffiles, rpm %config. The .env never changes between
# versions (so upgrades never ask), the template always may.
CONFIG = {
    "/etc/mssendmail/.env": ("config|noreplace", 0o640, "mssendmail"),
    "/etc/logrotate.d/mssendmail": ("config|noreplace", 0o644, "root"),
    "/etc/mssendmail/mssendmail.env.example": ("config", 0o644, "root"),
}
# What sendmail(8) users and Debian's maintainer scripts call. Debian: the
# package owns the names (Conflicts with every other MTA). RPM: NAME.mssendmail
# files behind alternatives(8), like postfix and sendmail on RHEL.
LINKS = {
    "/usr/sbin/sendmail": "../bin/mssendmail",
    "/usr/lib/sendmail": "../sbin/sendmail",
    "/usr/sbin/newaliases": "../bin/mssendmail",
    "/usr/bin/mailq": "mssendmail",
}
RPM_LINKS = {
    "/usr/sbin/sendmail.mssendmail": "../bin/mssendmail",
    "/usr/lib/sendmail.mssendmail": "../sbin/sendmail.mssendmail",
    "/usr/sbin/newaliases.mssendmail": "../bin/mssendmail",
    "/usr/bin/newaliases.mssendmail": "mssendmail",
    "/usr/bin/mailq.mssendmail": "mssendmail",
}


# `man sendmail` and friends: the .deb owns these names; on RHEL the MTA
# whose alternative is chosen does.
DEB_ONLY = {
    "/usr/share/man/man8/sendmail.8.gz",
    "/usr/share/man/man1/mailq.1.gz",
    "/usr/share/man/man8/newaliases.8.gz",
}


def python_requirements(minimum: str) -> tuple[str, str]:
    """Debian and RPM spellings of "a python3 at least this new"."""
    deb = f"python3 (>= {minimum})"
    minor = int(minimum.split(".")[1])
    # RHEL 9's python3 is 3.9; its python3.11 and python3.12 packages also
    # serve (package-setup picks the first that is new enough).
    alternatives = [f"python3.{m}" for m in (11, 12) if m >= minor]
    rpm = f"python3 >= {minimum}"
    if minor > 9 and alternatives:
        rpm = "(" + " or ".join([rpm, *alternatives]) + ")"
    return deb, rpm


def contents(root: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*")):
        dst = "/" + path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if dst in CONFIG:
            kind, mode, group = CONFIG[dst]
            entries.append(
                {
                    "src": str(path),
                    "dst": dst,
                    "type": kind,
                    "file_info": {"mode": mode, "owner": "root", "group": group},
                }
            )
            continue
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        entry: dict[str, Any] = {"src": str(path), "dst": dst, "file_info": {"mode": mode}}
        if dst.startswith(("/usr/share/doc/", "/usr/share/man/")):
            # rpm %doc (nfpm packs them as plain files in the .deb)
            entry["type"] = "doc"
        if dst in DEB_ONLY:
            entry["packager"] = "deb"
        entries.append(entry)
    entries.append(
        {
            "dst": "/etc/mssendmail",
            "type": "dir",
            "file_info": {"mode": 0o750, "owner": "root", "group": "mssendmail"},
        }
    )
    # logrotate's target; the deb creates it in postinst (the user comes later).
    entries.append(
        {
            "dst": "/var/log/mssendmail",
            "type": "dir",
            "file_info": {"mode": 0o750, "owner": "mssendmail", "group": "mssendmail"},
            "packager": "rpm",
        }
    )
    for links, packager in ((LINKS, "deb"), (RPM_LINKS, "rpm")):
        for dst, target in links.items():
            entries.append({"src": target, "dst": dst, "type": "symlink", "packager": packager})
    return entries


def scripts(directory: Path, fmt: str) -> dict[str, str]:
    names = {
        "deb": {
            "postinstall": "deb-postinst",
            "preremove": "deb-prerm",
            "postremove": "deb-postrm",
        },
        "rpm": {
            "preinstall": "rpm-pre",
            "postinstall": "rpm-post",
            "preremove": "rpm-preun",
            "postremove": "rpm-postun",
        },
    }[fmt]
    return {key: str(directory / name) for key, name in names.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--scripts", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--python-min", required=True)
    parser.add_argument("--changelog", type=Path, required=True, help="chglog file to write")
    args = parser.parse_args(argv)
    deb_python, rpm_python = python_requirements(args.python_min)
    # One entry (rpm %changelog, changelog.Debian): the history is git's.
    args.changelog.write_text(
        json.dumps(
            [
                {
                    "semver": f"{args.version}-{args.release}",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "packager": MAINTAINER,
                    "changes": [
                        {"note": f"mssendmail {args.version}; changes: the project's git log"}
                    ],
                }
            ]
        )
    )
    description = (
        f"{SUMMARY}\n"
        "A drop-in /usr/sbin/sendmail that spools every message durably and\n"
        "delivers it through the Microsoft Graph API (no SMTP AUTH, only HTTPS\n"
        "out). Its Python dependencies travel inside the package and are\n"
        "installed offline into a private venv."
    )
    config = {
        "name": NAME,
        "arch": args.arch,
        "platform": "linux",
        "version": args.version,
        "version_schema": "none",
        "release": args.release,
        "section": "mail",
        "priority": "optional",
        "maintainer": MAINTAINER,
        "description": description,
        "vendor": "mssendmail developers",
        "license": "MIT",
        "contents": contents(args.root),
        "deb": {"compression": "xz"},
        "changelog": str(args.changelog),
        "rpm": {"summary": SUMMARY, "group": "System Environment/Daemons"},
        "overrides": {
            "deb": {
                # As nullmailer: apt swaps out exim4, postfix or nullmailer.
                "depends": [deb_python, "init-system-helpers", "passwd"],
                "suggests": ["logrotate"],
                "provides": ["mail-transport-agent"],
                "conflicts": ["mail-transport-agent"],
                "replaces": ["mail-transport-agent"],
                "scripts": scripts(args.scripts, "deb"),
            },
            "rpm": {
                "depends": [
                    rpm_python,
                    "shadow-utils",
                    "/usr/sbin/alternatives",
                    "systemd",
                    "logrotate",
                ],
                "provides": ["MTA", "smtpdaemon", "server(smtp)"],
                "scripts": scripts(args.scripts, "rpm"),
            },
        },
    }
    json.dump(config, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
