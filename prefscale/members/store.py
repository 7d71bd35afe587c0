"""Save and load fitted members with skops: no pickle, and only allow-listed types are built."""

from __future__ import annotations

import os
from typing import Any

import skops.io as sio

from prefscale.errors import PrefscaleError
from prefscale.io import resolve, write_bytes

# skops already trusts plain scikit-learn estimators and numpy arrays; beyond those, only our
# own classes and the tree nodes of boosted trees. Functions (say builtins.eval planted as a
# vectorizer's preprocessor) are never on the list.
TRUSTED_PREFIXES = ("prefscale.members.estimators.", "prefscale.protocol_models.", "prefscale.stack.")
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)


def save_estimator(obj: Any, uri: str) -> None:
    write_bytes(sio.dumps(obj), uri)


def load_estimator(uri: str) -> Any:
    """Load a skops file, refusing any type skops does not trust that is not on our list."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise PrefscaleError(f"fitted model not found: {uri}; rerun the stage that writes it") from None
    types = sio.get_untrusted_types(data=data)
    refused = [t for t in types if not t.startswith(TRUSTED_PREFIXES) and t not in TRUSTED_TYPES]
    if refused:
        raise PrefscaleError(f"{os.fspath(uri)} holds types outside the allow-list ({', '.join(refused[:3])}); refusing to load it")
    return sio.loads(data, trusted=types)
