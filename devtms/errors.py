"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: a config, a CLI argument, or a run directory that cannot be used as asked.

    The message names the problem (field, value, what is allowed) and, where there is one,
    the way out (re-run a stage, pass --force).
    """


class RunDirError(UserError):
    """A run directory that is missing, foreign, incompatible, locked or damaged."""


class Interrupted(Exception):
    """Ctrl-C during a command's work. The message says what was kept and names the command
    that continues it; the CLI prints it as one line and exits with status 130."""
