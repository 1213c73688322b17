"""The command-line parser of the worker, the SMTP daemon and the admin tool.

argparse exits 2 on a bad command line; sysexits.h says 64 (EX_USAGE), which
is what mssendmail itself and every other failure here use. The usage line
goes first, then one line naming the program and the problem.
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
        print(f"{self.prog.split()[0]}: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)
