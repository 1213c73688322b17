"""The command-line parser of every program but ``mssendmail`` (which has its flag table).

argparse exits 2 on a bad argument; every program here exits 64 (EX_USAGE)
instead, from the one sysexits table, with argparse's usage line and one line
saying what was wrong.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from mssendmail.errors import EX_USAGE


class Parser(argparse.ArgumentParser):
    """argparse that exits 64 (EX_USAGE) with one line, as every program here does."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        program = self.prog.split(" ")[0]  # a subcommand's prog is "mssendmail-queue list"
        print(f"{program}: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)
