"""Lets `python ray_jobs/X.py` import prefscale from the job's working directory, and keeps that
directory under the driver's feet.

Under `ray job submit --working-dir .` the driver starts inside the unpacked package
(.../runtime_resources/working_dir_files/_ray_pkg_<hash>). Ray 2.60 unpacks that package again,
deleting the old copy first (working_dir plugin: `download_and_unpack_package(overwrite=True)`),
whenever it creates the runtime environment anew, for instance when the job's next workers start
after its last ones exited. The driver's current directory is then a deleted inode: os.getcwd()
and every relative path fail. So the driver copies its working directory once, at start, to a
directory of its own and runs from there; workers keep using Ray's copy (they only need imports).
"""

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_JOB = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
if _JOB and "working_dir_files" in str(ROOT):
    job_id = json.loads(_JOB).get("metadata", {}).get("job_submission_id") or str(os.getpid())
    stable = Path.home() / ".cache" / "prefscale" / "jobs" / job_id
    shutil.copytree(ROOT, stable, dirs_exist_ok=True)
    os.chdir(stable)
    ROOT = stable
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
