"""Ray job: the whole recipe from one config.

ray job submit --address http://127.0.0.1:8265 --working-dir . -- python ray_jobs/pipeline.py --config configs/local.yaml
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
