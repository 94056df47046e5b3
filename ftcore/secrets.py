"""Secrets never reach a job folder, by name or by value.

By name: environment variables whose name looks like a credential (HF_TOKEN, WANDB_API_KEY,
...) are refused as `container.env` keys; they travel in the user's environment, which srun
and the container pass through. By value: when such a variable is set here, its value may
appear in no setting, script line or record ft writes (a token pasted into `description`,
`slurm.extra.comment` or a sweep value would otherwise land in config.yaml and job.sbatch).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Mapping

# Names that look like credentials. The one definition: the schema and every writer use it.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL)", re.I)
# Shorter values (`1`, `true`, a port) would be found everywhere and protect nothing.
MIN_SECRET_LENGTH = 8


def looks_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variable name → value for every credential-looking variable set in the environment."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items()
            if looks_secret(name) and len(value.strip()) >= MIN_SECRET_LENGTH}


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            yield inner, str(key)
            yield from _strings(item, inner)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, where)


def find(value: Any, where: str = "", environ: Mapping[str, str] | None = None) -> list[str]:
    """A problem for each place in `value` (a job dict, a list, a text) holding a secret's value."""
    found = secret_values(environ)
    if not found:
        return []
    problems = []
    for place, text in _strings(value, where):
        for name, secret in found.items():
            if secret in text:
                problems.append(
                    f"{place or 'a value'} holds the value of ${name}: ft never writes secrets to a job folder. "
                    f"Leave it in your environment (the job inherits ${name}) and read it from there")
    return list(dict.fromkeys(problems))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret's value replaced by its variable's name (for records of what
    another program said)."""
    for name, secret in secret_values(environ).items():
        text = text.replace(secret, f"${name}")
    return text
