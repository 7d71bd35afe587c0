"""Ray job: one data stage (validate, split, pairs, stats); arguments as for `prefscale data`.

ray job submit --working-dir . -- python ray_jobs/data.py validate s3://bucket/train.parquet --out s3://bucket/clean.parquet --json
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
