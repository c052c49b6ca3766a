"""The one error every job raises when something broke (not slow: broken)."""


class BenchError(Exception):
    """Something broke (not slow: broken): the bench exits non-zero."""
