"""Progress bars on stderr for long work, so stdout stays clean for the JSON summary."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "rows") -> tqdm:
    """Counts whole rows or steps ("312/806 rows"), never scaled to "0.00k"."""
    return tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr, mininterval=1.0, leave=False, dynamic_ncols=True)
