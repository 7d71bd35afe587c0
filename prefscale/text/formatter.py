"""Turn battles into token ids under a total length, with a configurable template.

Layout: special tokens + template literals + three components (prompt, response A, response
B). Each component is its turns joined by a separator. The budget left after the fixed parts
is split by ``allocate``; a component over its grant keeps its most recent turns (cut at the
start, marked with the elision marker), or the head of its last turn when that turn alone is
too long (an answer's opening says the most about it). When both answers start with the same
tokens (shared earlier turns, one transcript continued two ways), that shared part moves to
the front of the prompt: otherwise a short budget shows the model two identical openings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefscale.config import TextConfig
from prefscale.data.kaggle_json import decode_turns, turns_text
from prefscale.text.budget import allocate
from prefscale.text.template import FIELDS, parse_template


@dataclass
class Encoded:
    input_ids: list[list[int]]
    component_tokens: list[tuple[int, int, int]]  # tokens each component kept
    truncated: list[bool]


class BattleFormatter:
    """Formats and tokenizes battles in batches with a fast tokenizer."""

    def __init__(self, tokenizer, options: TextConfig = TextConfig()) -> None:
        self.tokenizer = tokenizer
        self.options = options
        parts = parse_template(options.template)
        self._literals = [self._ids(literal) for literal, _ in parts]
        self._fields = [name for _, name in parts]
        self._separator = self._ids(options.turn_separator)
        self._marker = self._ids(options.elision_marker)
        self._prefix, self._suffix = self._special_tokens()
        fixed = len(self._prefix) + len(self._suffix) + sum(map(len, self._literals))
        self.component_budget = options.max_length - fixed
        if self.component_budget < 3:
            raise ValueError(f"max_length {options.max_length} leaves no room for text after {fixed} template tokens")
        # Text far beyond what can be kept is clipped before tokenizing (tokenizing dominates
        # CPU time): no component keeps more than the whole budget, only a turn's head or
        # tail is ever used, and a token averages well under 8 characters.
        self._clip_chars = 8 * self.component_budget

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        core = self._ids("a")
        full = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(core) + 1):
            if full[start : start + len(core)] == core:
                return full[:start], full[start + len(core) :]
        return [], []

    def _clip(self, text: str) -> str:
        c = self._clip_chars
        return text if len(text) <= 2 * c else text[:c] + " " + text[-c:]

    def _fit(self, turns: list[list[int]], grant: int) -> tuple[list[int], bool]:
        marker = self._marker
        joined = self._join(turns)
        if len(joined) <= grant:
            return joined, False
        last = next((turn for turn in reversed(turns) if turn), [])  # the latest turn with text
        if grant <= len(marker):
            return last[:grant], True
        room = grant - len(marker)
        if len(last) >= room:
            return last[:room] + marker, True
        return marker + joined[-room:], True

    def _tokenize(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[list[list[list[int]]]]:
        """Per row, per component, per turn: token ids (one batched tokenizer call)."""
        cells = list(zip(prompts, responses_a, responses_b, strict=True))
        turn_lists = [[turns_text(decode_turns(cell)) for cell in row] for row in cells]
        flat = [self._clip(t) for row in turn_lists for comp in row for t in comp]
        flat_ids = self.tokenizer(flat, add_special_tokens=False, verbose=False)["input_ids"] if flat else []
        position = 0
        rows = []
        for row in turn_lists:
            components = []
            for comp in row:
                components.append(flat_ids[position : position + len(comp)])
                position += len(comp)
            rows.append(components)
        return rows

    def _join(self, turns: list[list[int]]) -> list[int]:
        joined: list[int] = []
        for index, turn in enumerate(turns):
            joined += (self._separator if index else []) + turn
        return joined

    def _move_shared_prefix(self, components: list[list[list[int]]]) -> list[list[list[int]]]:
        """[shared opening + prompt, rest of A, rest of B]; unchanged when little is shared or one
        answer is wholly the other's opening (identical answers stay visible as such). The shared
        part goes first so a prompt over its grant keeps its own latest turn, the question answered."""
        prompt, a, b = components
        joined_a, joined_b = self._join(a), self._join(b)
        shared = 0
        for x, y in zip(joined_a, joined_b):
            if x != y:
                break
            shared += 1
        if shared < self.options.min_shared_tokens or shared >= min(len(joined_a), len(joined_b)):
            return components
        return [[joined_a[:shared]] + [t for t in prompt if t], [joined_a[shared:]], [joined_b[shared:]]]

    def _assemble(self, rows: list[list[list[list[int]]]]) -> Encoded:
        out = Encoded([], [], [])
        for components in rows:
            if self.options.shared_prefix_to_prompt:
                components = self._move_shared_prefix(components)
            lengths = [sum(map(len, c)) + len(self._separator) * (len(c) - 1) if any(c) else 0 for c in components]
            grants = allocate(lengths, self.component_budget, self.options.weights)
            fitted = {}
            cut = False
            for name, comp, grant in zip(FIELDS, components, grants, strict=True):
                fitted[name], was_cut = self._fit(comp, grant)
                cut |= was_cut
            ids = list(self._prefix)
            for literal, name in zip(self._literals, self._fields, strict=True):
                ids += literal + (fitted[name] if name else [])
            ids += self._suffix
            out.input_ids.append(ids)
            out.component_tokens.append(tuple(len(fitted[n]) for n in FIELDS))
            out.truncated.append(cut)
        return out

    def encode(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Encoded:
        """Encode Kaggle-format cells (JSON lists of turns) into input ids."""
        return self._assemble(self._tokenize(prompts, responses_a, responses_b))

    def encode_with_swap(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> tuple[Encoded, Encoded]:
        """The battles and their A/B-swapped twins (for TTA), tokenizing the text once."""
        rows = self._tokenize(prompts, responses_a, responses_b)
        return self._assemble(rows), self._assemble([[p, b, a] for p, a, b in rows])
