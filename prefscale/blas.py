"""One BLAS thread for the small numerical fits that run in the driver.

The LR stacker, the calibrators, the TF-IDF member and the leaderboard fit a few dozen to a few
thousand parameters by L-BFGS, on matrices of about 10,000 x 50: each BLAS call is tiny, and
with a thread per core (numpy and scipy each load their own OpenBLAS) they run several times
slower, most likely from the two thread pools waking and spinning against each other.
On 2 cores one LR stacker fit took 1.6 s that way and 0.53 s on one thread, with the same
result up to the optimiser's tolerance (benchmarks/bench_small_fits.py). Ray tasks of one CPU
already run one thread (Ray sets OMP_NUM_THREADS=1); this is for the driver, where the stacking
stage, the all-data member fits and the leaderboard run.
"""

from threadpoolctl import threadpool_limits

one_blas_thread = threadpool_limits.wrap(limits=1, user_api="blas")
