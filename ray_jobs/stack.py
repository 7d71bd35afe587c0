"""Ray job: stacking, calibration and the report (arguments as `prefscale stack`).

ray job submit --working-dir . -- python ray_jobs/stack.py --config configs/local.yaml
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["stack", *sys.argv[1:]]))
