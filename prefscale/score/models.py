"""What to score with: a named model, its weights, precision and text options."""

from __future__ import annotations

from dataclasses import dataclass

from prefscale.text.formatter import TextOptions


@dataclass(frozen=True)
class ScoringModel:
    name: str
    path: str
    text: TextOptions = TextOptions()
    precision: str = "fp32"
    trust_remote_code: bool = False

    def column(self, field: str) -> str:
        """Per-model column in the wide intermediate table, e.g. 'base.logit_a'."""
        return f"{self.name}.{field}"
