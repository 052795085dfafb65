"""The one exception type for problems a user can fix (bad config, bad data, missing file).

Raised where the bad value enters, caught once in each entry script, printed as one line, exit code 2.
"""
import functools
import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem in the user's input; the message names the file/key/sample and what was expected."""


EXIT_USER_ERROR = 2


def sample_names(names, n: int = 5) -> str:
    """Up to n of `names`, sorted and quoted, for error messages that must not list thousands of ids."""
    names = sorted(names, key=str)
    return ", ".join(repr(x) for x in names[:n]) + (", ..." if len(names) > n else "")


def exits_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Entry-point decorator: a UserError becomes one line on stderr and exit code 2, never a traceback.

    Under torchrun every rank checks the same input, so only rank 0 prints; the others exit quietly."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if os.environ.get("RANK", "0") == "0":
                print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR

    return wrapped
