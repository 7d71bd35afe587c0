"""Ray job: apply a finished run's ensemble to new battles (arguments as `prefscale predict`).

ray job submit --working-dir . -- python ray_jobs/predict.py --run-dir RUN_DIR --input test.parquet --out submission.csv
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
