"""Ray job: fit the cheap members per fold (arguments as `prefscale members`).

ray job submit --working-dir . -- python ray_jobs/members.py --config configs/local.yaml
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["members", *sys.argv[1:]]))
