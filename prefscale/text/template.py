"""The text template: literals around the three fields of a battle."""

from __future__ import annotations

import string

FIELDS = ("prompt", "response_a", "response_b")
DEFAULT_TEMPLATE = "<prompt>: {prompt}\n\n<response_a>: {response_a}\n\n<response_b>: {response_b}"


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """[(literal, field or None)], checking each of the three fields appears exactly once."""
    parts = [(literal, name) for literal, name, _, _ in string.Formatter().parse(template)]
    names = [name for _, name in parts if name is not None]
    if sorted(names) != sorted(FIELDS):
        raise ValueError(f"template must contain each of {{prompt}}, {{response_a}}, {{response_b}} once, got {names}")
    return parts
