"""Time obs_select on one layer with a random Gram matrix, pruned to half its width, hidden 2560 (E4B's).

    PYTHONPATH=. python benchmarks/bench_obs_cost.py 10240 128     # channels, channels per step

CPU seconds of this process (2 BLAS threads) are reported beside wall seconds: the machine is shared, so
wall time measures the load; CPU time / threads is what an idle 2-core machine would take.
"""
import resource
import sys
import time

import torch

from studio.flap.refit import GramMatrix
from studio.flap import obs as obs_module
n = int(sys.argv[1])
block = int(sys.argv[2])
hidden = 2560
g = torch.Generator().manual_seed(0)
m = torch.randn(n, n // 4, generator=g, dtype=torch.float64)
xx = m @ m.T
del m
xx.diagonal().add_(1.0)
gram = GramMatrix(xx, torch.zeros(n, dtype=torch.float64), count=4096)
w = torch.randn(hidden, n, generator=g, dtype=torch.float64)
clock = {}
inverse = obs_module.damped_inverse_gram
def timed_inverse(*args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = inverse(*args)
    clock["inverse"] = (time.perf_counter() - wall, time.process_time() - cpu)
    return out
obs_module.damped_inverse_gram = timed_inverse
wall, cpu = time.perf_counter(), time.process_time()
sel = obs_module.obs_select(gram, w, n // 2, 0.01, block)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
iw, ic = clock["inverse"]
print(f"n={n} hidden={hidden} block={block} threads={torch.get_num_threads()}: to 50% in {len(sel.steps)} steps: "
      f"total wall {wall:.1f} s cpu {cpu:.1f} s; of which inverse wall {iw:.1f} s cpu {ic:.1f} s; "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f} GiB", flush=True)
