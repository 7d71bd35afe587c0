"""Ray job: K-fold training with OOF logits (arguments as `prefscale train`).

ray job submit --working-dir . -- python ray_jobs/train.py --config configs/gemma2_9b_student.yaml
"""

import sys

import _path  # noqa: F401

from prefscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
