"""Reading what a command wrote to a pseudo-terminal (progress bars draw only on a terminal)."""

from __future__ import annotations

import os


def read_terminal(master: int) -> bytes:
    """Everything written to the terminal until the child closes it; closes `master`."""
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    return screen
