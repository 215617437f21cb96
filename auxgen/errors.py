"""One error type for everything a user can get wrong: the CLI prints it as one line."""


class AuxgenError(Exception):
    """A user-facing error: bad input, missing data, an unsafe overwrite, a diverged run.

    The CLI prints `error: <message>` and exits with `exit_code` (2: bad usage or input).
    """

    exit_code = 2


class CheckpointError(AuxgenError):
    """A checkpoint that is missing, damaged, foreign or does not fit its run: never a data problem.

    Callers that carry on without a dataset (the report's curves) must still stop on this one.
    """
