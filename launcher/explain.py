"""`ft show --explain`: every field of a resolved job with its description and default."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from launcher.config import _is_model, _unwrap
from ftcore.schema import Job


def _default(info: Any) -> str:
    if info.default is not PydanticUndefined:
        return json.dumps(info.default, default=str)
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
        return json.dumps(value, default=str)
    return "(required)"


def _lines(model: BaseModel | None, cls: type[BaseModel], indent: int) -> list[str]:
    lines = []
    pad = "  " * indent
    for name, info in cls.model_fields.items():
        value = getattr(model, name) if model is not None else None
        inner = _unwrap(info.annotation)
        lines.append(f"{pad}# {info.description or ''}")
        if _is_model(inner):
            if value is None:
                lines.append(f"{pad}{name}: null    # default: {_default(info)}")
                continue
            lines.append(f"{pad}{name}:")
            lines.extend(_lines(value, inner, indent + 1))
            continue
        shown = json.dumps(value.model_dump(mode='json') if isinstance(value, BaseModel) else value, default=str)
        lines.append(f"{pad}{name}: {shown}    # default: {_default(info)}")
    return lines


def explain(job: Job) -> str:
    return "\n".join(_lines(job, Job, 0)) + "\n"
