"""The demo's hold on the terminal: Ctrl-C should stop the demo, and only the demo.

A terminal's Ctrl-C signals its whole foreground process group. Under `make demo`
that group holds make as well, and make answers SIGINT by dying of it (exit 130,
"Interrupt") even when the demo it waits for stops cleanly and exits 0. So the demo
moves into a process group of its own and makes it the terminal's foreground, as a
job-control shell would, and hands the terminal back when it ends.

The price: a signal sent to make's group no longer reaches the demo. make passes
SIGTERM on to it but waits out SIGINT, so `timeout -s INT ... make demo` at a terminal
would wait for ever; the README points scripts to `--duration` instead. Relaying the
group's signals would need a process left behind in it, more machinery than a demo
deserves. Without a terminal none of this happens: the demo stays in make's group.
"""

import contextlib
import os
import signal
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def own_foreground() -> Iterator[None]:
    """Lead the terminal's foreground group for the block; a no-op without a terminal,
    in the background, or when already leading the foreground (run from a shell)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    previous = os.getpgrp()
    if os.tcgetpgrp(fd) != previous or previous == os.getpid():
        yield
        return
    os.setpgid(0, 0)
    _set_foreground(fd, os.getpgrp())
    # Ctrl-Z would stop this group only, while make waits on it and the shell on make:
    # nobody would be left to resume it. Ignored here, it is ignored by the broker too.
    suspend = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, suspend)
        with contextlib.suppress(OSError):  # the old group may be gone (make was killed)
            _set_foreground(fd, previous)


def _set_foreground(fd: int, group: int) -> None:
    # A process outside the foreground group that calls tcsetpgrp gets SIGTTOU, which
    # would stop it: ignore that signal for the call.
    handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, group)
    finally:
        signal.signal(signal.SIGTTOU, handler)
