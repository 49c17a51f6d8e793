"""The one exception type users see: a clear one-line message, turned into exit code 2 by the CLI."""


class ScirlError(Exception):
    """A user-facing error (bad config key, missing path, empty dataset...). The CLI prints it on one line."""
