"""The one exception type for problems a user can fix (bad config, bad data, missing file).

Raised where the bad value enters, caught once in each entry script, printed as one line, exit code 2.
"""
import functools
import os
import sys
import time
from typing import Callable


class UserError(Exception):
    """A problem in the user's input; the message names the file/key/sample and what was expected."""


EXIT_USER_ERROR = 2
OTHER_RANKS_WAIT_S = 5.0


def sample_names(names, n: int = 5) -> str:
    """Up to n of `names`, sorted and quoted, for error messages that must not list thousands of ids."""
    names = sorted(names, key=str)
    return ", ".join(repr(x) for x in names[:n]) + (", ..." if len(names) > n else "")


def exits_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Entry-point decorator: a UserError becomes one line on stderr and exit code 2, never a traceback.

    Under torchrun every rank checks the same input: rank 0 prints the line. Another rank waits a moment first,
    because torchrun stops every rank as soon as one exits; it prints only when it is still running after that
    (an error of its own, e.g. a file only its node lacks), naming its rank."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            rank = os.environ.get("RANK", "0")
            if rank != "0":
                time.sleep(OTHER_RANKS_WAIT_S)
            print(f"error: {e}" if rank == "0" else f"error (rank {rank}): {e}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR

    return wrapped
