"""One error type for everything a user can get wrong: the CLI prints it as one line."""


class AuxgenError(Exception):
    """A user-facing error: bad input, missing data, an unsafe overwrite, a diverged run."""
