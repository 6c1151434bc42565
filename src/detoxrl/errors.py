"""User-facing errors.

Every problem a user can fix (bad config, missing data column, unknown label, missing weight
package...) is raised as a :class:`DetoxError` whose message is one line naming what is wrong
and how to fix it. The CLI prints it without a traceback and exits with status 2.
"""

import sys


class DetoxError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it.

    ``quiet``: set on the copies that the other processes of a multi-process run raise of an error that
    the main process reports (the command line prints it once, not once per process)."""

    quiet = False


class ConfigError(DetoxError):
    """A wrong key, type or value in the configuration."""


class DataError(DetoxError):
    """A data source that cannot be used as given."""


class ModelLoadError(DetoxError):
    """A model, adapter, classifier or checkpoint that cannot be loaded."""


class TrainingError(DetoxError):
    """A run that stopped learning (every minibatch of a PPO step skipped): never reported as success."""


def note(line: str) -> None:
    """A ``note:`` line on stderr: something the user should know that is not an error."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters: for a one-line error."""
    return (str(e).strip().splitlines() or [""])[0][:200]
