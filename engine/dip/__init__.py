"""Deep Image Prior backend (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018).

``nets`` (the skip encoder-decoder), ``loop`` (the one optimisation loop) and ``tasks``
(denoise, inpaint: objective + net config) all import torch; this package's ``__init__``
does not, so ``import engine.dip`` stays cheap. The op layer imports ``engine.dip.tasks``
lazily, when a DIP op actually runs.
"""
