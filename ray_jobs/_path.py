"""Lets `python ray_jobs/X.py` import prefscale from the job's working directory."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
