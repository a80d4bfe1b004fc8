"""The one error type users see: it names the problem and the fix."""


class RemoteClipError(Exception):
    """A problem the user can fix. ``str(err)`` reads "problem Fix: what to do"."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class Cancelled(Exception):
    """Raised inside a run when the caller's cancel callback says stop."""
