"""Ray job: score battles with the config's models (resumable; arguments as `prefscale score`).

ray job submit --working-dir . -- python ray_jobs/score.py --config configs/local.yaml --input s3://bucket/battles.parquet --out s3://bucket/scores
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
