"""Standard output whose reader went away (`... | head`): told apart from the command's own
failures, which it is not."""

import io
import os
import select
import sys


def reader_gone(error: BaseException) -> bool:
    """`error` is a write to standard output whose reading end closed."""
    if not isinstance(error, BrokenPipeError):
        return False
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def discard_the_rest() -> None:
    """What was left unprinted must not fail again at the interpreter's exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
