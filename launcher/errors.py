"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """One or more problems with what the user asked for, reported together."""

    exit_code = 2

    def __init__(self, *problems: str, hint: str | None = None):
        self.problems = [p for p in problems if p]
        self.hint = hint
        super().__init__("\n".join(self.problems))


class SchedulerError(UserError):
    """The scheduler said no, or said something ft cannot read; carries its raw words."""

    def __init__(self, message: str, raw: str = "", hint: str | None = None):
        problems = [message] + ([f"scheduler said: {raw.strip()}"] if raw.strip() else [])
        super().__init__(*problems, hint=hint)
        self.raw = raw
