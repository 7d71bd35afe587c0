"""A finished run is a sealed bundle: the sha256 of every file `prefscale predict` loads.

Written when the report is (the run is then complete); `predict` checks it first, so a model,
member, stacker or config changed or deleted after the run finished is named instead of being
silently mixed with the rest. A stage rerun that changes those files reseals the run.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow.fs as pafs

from prefscale.config import Config
from prefscale.errors import PrefscaleError
from prefscale.io import exists, read_json, resolve, write_json
from prefscale.layout import CHEAP_ENSEMBLE

CHUNK = 8 << 20


def bundle_files(config: Config, members: list[str]) -> list[str]:
    """Every file predict loads for these stacked members, in a stable order."""
    from prefscale.score.scoring_model import scoring_plan

    layout = config.layout
    roots = [layout.config, layout.stack_summary, *(layout.stack_file(f"{n}.skops") for n in ("stacker", "calibrator", "rules"))]
    if config.cascade:  # `prefscale cascade` loads its thresholds and the stages' models too
        roots.append(layout.cascade_fit)
        if CHEAP_ENSEMBLE in config.cascade.stages:
            roots += [layout.stack_file(f"{n}.skops", CHEAP_ENSEMBLE) for n in ("stacker", "calibrator", "rules")]
        members = [*members, *(s for s in config.cascade.stages if (s in config.members or s in config.train) and s not in members)]
    for name in members:
        roots += [layout.member_model(name)] if name in config.members else [path for model, _ in scoring_plan(config, name)
                                                                                for path in _model_files(model)]
    files: list[str] = []
    for root in roots:
        fs, path = resolve(root)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files += sorted(f"{root.rstrip('/')}/{e.path[len(path):].lstrip('/')}" for e in found if e.type == pafs.FileType.File)
        else:
            files.append(root)
    return files


def _model_files(model) -> list[str]:
    """What a scoring model loads from storage: its adapter, and its base when that is a folder (a hub
    id or an installed package is named by the config, which is sealed)."""
    return [*([model.adapter] if model.adapter else []), *([model.path] if "://" in model.path or os.path.isdir(model.path) else [])]


def sha256(uri: str) -> str:
    fs, path = resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _key(config: Config, uri: str) -> str:
    """Paths inside the run directory are stored relative to it, so a moved run still verifies."""
    roots = [config.run_dir.rstrip("/") + "/"]
    if "://" not in config.run_dir:
        roots.append(os.path.abspath(config.run_dir) + "/")  # models are named by their absolute path
    return next((uri[len(root):] for root in roots if uri.startswith(root)), uri)


def _identity(uri: str) -> list[int]:
    """Size and modification time: re-hashing 18 GB of weights on every predict is what this saves."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    return [info.size, info.mtime_ns]


def seal(config: Config, members: list[str]) -> dict[str, int]:
    files = bundle_files(config, members)
    write_json({"files": {_key(config, f): sha256(f) for f in files}, "identity": {_key(config, f): _identity(f) for f in files}},
               config.layout.manifest)
    return {"sealed_files": len(files)}


def verify(config: Config, full: bool = False) -> int:
    """Refuse a run whose bundle is unsealed, or whose files changed or are missing, naming them.
    A file whose size and modification time are as sealed is not hashed again unless ``full``
    (`predict --verify`); returns how many files were hashed."""
    layout = config.layout
    reseal = f"rerun `prefscale stack --config {layout.config} --run-dir {config.run_dir}` to restack and reseal it"
    if not exists(layout.manifest):
        raise PrefscaleError(f"{config.run_dir} has no manifest.json (finished before runs were sealed, or its report never ran); {reseal}")
    manifest = read_json(layout.manifest)
    recorded: dict[str, str] = manifest["files"]
    identities: dict[str, list[int]] = manifest.get("identity", {})
    root = config.run_dir.rstrip("/")
    missing, changed, hashed = [], [], 0
    for key, digest in recorded.items():
        uri = key if os.path.isabs(key) or "://" in key else f"{root}/{key}"
        if not exists(uri):
            missing.append(key)
        elif full or _identity(uri) != identities.get(key):
            hashed += 1
            if sha256(uri) != digest:
                changed.append(key)
    if missing or changed:
        listed = "; ".join(part for part in (f"missing: {', '.join(missing[:5])}" if missing else "",
                                              f"changed: {', '.join(changed[:5])}" if changed else "") if part)
        raise PrefscaleError(f"{config.run_dir} is not the run that was finished ({listed}); restore those files or {reseal}")
    return hashed
