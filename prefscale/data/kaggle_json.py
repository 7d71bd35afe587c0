"""The Kaggle LMSYS text codec: each text cell is a JSON list of turns (strings or null).

Kaggle wrote them with ``json.dumps(turns, ensure_ascii=True, separators=(',', ':'))`` and
escaped ``/`` as ``\\/``; re-encoding with the same rules reproduces the files byte for byte,
so ids and hashes derived from the encoded text stay stable.
"""

from __future__ import annotations

import json

Turns = list[str | None]


class TurnsDecodeError(ValueError):
    """Raised when a cell is not a JSON list of strings or nulls."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def decode_turns(cell: str) -> Turns:
    """Parse one cell; raises TurnsDecodeError with reason 'unparseable_json' or 'bad_turns'."""
    try:
        value = json.loads(cell)
    except (json.JSONDecodeError, TypeError) as exc:
        raise TurnsDecodeError("unparseable_json", f"{exc}") from None
    if not isinstance(value, list) or not value:
        raise TurnsDecodeError("bad_turns", f"expected a non-empty JSON list, got {type(value).__name__}")
    for turn in value:
        if turn is not None and not isinstance(turn, str):
            raise TurnsDecodeError("bad_turns", f"turns must be strings or null, got {type(turn).__name__}")
    return value


def encode_turns(turns: Turns) -> str:
    """Encode turns exactly as Kaggle did."""
    return json.dumps(turns, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")


def turns_text(turns: Turns) -> list[str]:
    """Turns with null read as the empty string (a model that produced no answer)."""
    return [t if t is not None else "" for t in turns]
