"""OpenMP's wait policy, set before torch loads its OpenMP runtime (which reads it once, at load).

By default OpenMP threads spin while they wait for work. On a machine shared with another busy process the
spinning threads fight it for the cores: the study's training step then runs at 39-41% of its idle speed on 2
cores. With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep: 57-65% beside the same process (1.3-1.6x the
spinning default's images/s there), and the same idle speed within this machine's noise (0.89-1.06x in two
runs of ``benchmarks/threads.py``). One thread would keep 99% under load but lose a third of the idle speed.
torchshrink sets it when nobody has (``OMP_WAIT_POLICY=ACTIVE`` keeps spinning) and torch is not loaded yet;
imported after torch, it changes nothing.
"""

from __future__ import annotations

import os
import sys

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
