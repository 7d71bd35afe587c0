"""Ray job: pseudolabel an unlabeled dump (arguments as `prefscale pseudolabel`).

ray job submit --working-dir . -- python ray_jobs/pseudolabel.py --config configs/local.yaml --input s3://bucket/pairs.parquet
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["pseudolabel", *sys.argv[1:]]))
