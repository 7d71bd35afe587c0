"""Save and load fitted members with skops: no pickle, and only allow-listed types are built."""

from __future__ import annotations

import os
from typing import Any

import skops.io as sio

from prefscale.errors import PrefscaleError
from prefscale.io import resolve, write_bytes

# skops already trusts plain scikit-learn estimators and numpy arrays; beyond those, exactly the
# classes prefscale saves and the tree nodes of boosted trees, each by its full name (not a module
# prefix: any other class under prefscale.* is refused too). Functions (say builtins.eval planted
# as a vectorizer's preprocessor) are never on the list.
TRUSTED_TYPES = frozenset({
    "prefscale.members.estimators.FeatureMember", "prefscale.members.estimators.TfidfMember",
    "prefscale.protocol_models.SoftmaxRegression", "prefscale.protocol_models.ConstantBinary", "prefscale.protocol_models.FactoredModel",
    "prefscale.stack.stackers.LogisticStacker", "prefscale.stack.blend.BlendStacker", "prefscale.stack.degenerate.DegenerateRules",
    "prefscale.stack.calibration.IdentityCalibrator", "prefscale.stack.calibration.TemperatureCalibrator",
    "prefscale.stack.calibration.VectorCalibrator", "prefscale.stack.calibration.DirichletCalibrator",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})


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
    refused = [t for t in types if t not in TRUSTED_TYPES]
    if refused:
        raise PrefscaleError(f"{os.fspath(uri)} holds types outside the allow-list ({', '.join(refused[:3])}); refusing to load it")
    return sio.loads(data, trusted=types)
