"""The one error a user can act on. Both halves print it without a traceback and exit 2."""

from __future__ import annotations

from ftcore import exits


class UserError(Exception):
    """One or more problems with what the user asked for, reported together."""

    exit_code = exits.USER_ERROR

    def __init__(self, *problems: str, hint: str | None = None):
        self.problems = [p for p in problems if p]
        self.hint = hint
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)  # problems may be added on the way up

    def lines(self) -> list[str]:
        """The problems with the hint folded into the last one: for a caller that gathers the
        problems of several checks into one error, so that the way out is not lost."""
        if not self.hint or not self.problems:
            return list(self.problems)
        return [*self.problems[:-1], f"{self.problems[-1]}; {self.hint}"]
