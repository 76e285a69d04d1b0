"""The consoles every command prints through: tables and results on stdout, errors on stderr.

Off a terminal (a pipe, a log file, a test) the width is fixed so that tables come out the same everywhere.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 140  # columns when stdout is not a terminal


def make_console(width: int = PIPE_WIDTH, *, stderr: bool = False) -> Console:
    """A rich console of the terminal's width, or ``width`` columns when its stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else width, stderr=stderr)


console = make_console()
