"""The project's exceptions; turned into one stderr line and an exit status by the CLI."""


class SynthesisError(Exception):
    """A failure the user can act on (bad file, missing weights, full disk): exit status 1."""

    exit_status = 1


class UsageError(SynthesisError):
    """An option or option combination that is not allowed: exit status 2."""

    exit_status = 2
