"""docs/CONFIG.md, generated from the typed config: every key, its type, default and meaning.

The pydantic models in prefscale/config.py are the one place the keys are defined; this renders
them, and a test fails when docs/CONFIG.md differs from the rendering.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from prefscale.config import Config

REGENERATE = "prefscale config reference > docs/CONFIG.md"


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field nests (directly, optionally, or as dict values) and the path suffix it adds."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return _section_model(args[1])[0], ".<name>"
    if typing.get_origin(annotation) is list and len(args) == 1:
        return _section_model(args[0])[0], "[]"
    models = [a for a in args if inspect.isclass(a) and issubclass(a, BaseModel)]
    return (models[0], "") if len(models) == 1 else (None, "")


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    text = json.dumps(value if not isinstance(value, tuple) else list(value))
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sections(model: type[BaseModel], path: str) -> list[str]:
    lines = [f"## {path or '(top level)'}", ""]
    if model.__doc__ and model is not Config:
        lines += [_cell(inspect.cleandoc(model.__doc__)), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[str] = []
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_cell(_type_name(field.annotation))} | {_default(field)} | {_cell(field.description or '')} |")
        child, suffix = _section_model(field.annotation)
        if child is not None:
            nested += ["", *_sections(child, f"{path}.{name}{suffix}".lstrip("."))]
    return lines + nested


def config_reference() -> str:
    """The whole reference as Markdown."""
    header = ["# Config reference", "",
              f"Generated from the typed config in `prefscale/config.py` by `{REGENERATE}`; a test fails when it is stale.",
              "Unknown keys and wrong types are errors (`prefscale config check`); `prefscale config schema` prints the JSON Schema.",
              "`<name>` stands for a name you choose (a train run, a member).", ""]
    return "\n".join(header + _sections(Config, "")) + "\n"
