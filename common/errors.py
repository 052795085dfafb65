"""The one exception type for problems a user can fix (bad config, bad data, missing file).

Raised where the bad value enters, caught once in each entry script, printed as one line, exit code 2.
"""


class UserError(Exception):
    """A problem in the user's input; the message names the file/key/sample and what was expected."""


EXIT_USER_ERROR = 2


def sample_names(names, n: int = 5) -> str:
    """Up to n of `names`, sorted and quoted, for error messages that must not list thousands of ids."""
    names = sorted(names, key=str)
    return ", ".join(repr(x) for x in names[:n]) + (", ..." if len(names) > n else "")
