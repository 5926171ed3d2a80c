"""Deep Image Prior backend (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018).

``nets`` (the skip encoder-decoder), ``loop`` (the one optimisation loop) and ``tasks``
(denoise, inpaint: objective + net config) all import torch; this package's ``__init__``
does not, so ``import engine.dip`` stays cheap. The op layer imports ``engine.dip.tasks``
lazily, when a DIP op actually runs.
"""
import os

# torch's OpenMP workers busy-wait between parallel regions by default. When anything else
# wants the same cores (GIMP, a browser, a second engine) that spinning starves the workers
# that hold real work: on a loaded 2-core machine one DIP iteration went from ~0.1 s to ~2 s.
# Passive waiting costs little when the machine is idle. libgomp reads this once, when torch
# is first imported, so it must be set before that; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
