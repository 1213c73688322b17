"""`mssendmail-queue purge-maildrop`: remove what submitters left in maildrop/ that is no mail.

The worker skips maildrop/ entries it can neither queue nor move into
corrupt/ (a directory, typically: renaming it needs write access to it,
which only its owner has) and logs each once with event=maildrop-skipped.
This removes them: every entry that is not a regular file with a queue-id
or temp name. Directories go with their contents (shutil.rmtree, which on
Linux works through directory fds and never follows a symlink out of the
tree). Regular files, pending mail or not, are left to the worker.

SECURITY: root can remove anything; a member of group mssendmail only
what the sticky maildrop/ lets it (what the mssendmail user owns, or all
of it when run as that user), and is told what it could not remove.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from mssendmail.spool import intake
from mssendmail.spool.layout import MAILDROP, TEMP_PREFIX, Spool, is_id

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "device"),
    (stat.S_ISBLK, "device"),
)


@dataclass(frozen=True)
class Junk:
    name: str
    kind: str
    uid: int


def kind_of(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "regular file"


def junk(spool: Spool) -> list[Junk]:
    """maildrop/ entries that are not mail: anything but a regular, well-named file."""
    found = []
    for name in sorted(os.listdir(spool.dir(MAILDROP))):
        try:
            st = os.lstat(spool.path(MAILDROP, name))
        except FileNotFoundError:
            continue
        mail_name = is_id(name) or name.startswith(TEMP_PREFIX)
        if stat.S_ISREG(st.st_mode) and mail_name:
            continue
        found.append(Junk(name, kind_of(st.st_mode), st.st_uid))
    return found


def remove(spool: Spool, entry: Junk) -> str | None:
    """Remove one entry; None when done, else why not."""
    try:
        intake.remove_junk(spool, entry.name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
