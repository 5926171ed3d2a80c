"""Deep Image Prior backend (Ulyanov, Vedaldi, Lempitsky, "Deep Image Prior", CVPR 2018).

``nets`` (the skip encoder-decoder), ``loop`` (the one optimisation loop, with automatic
stopping), ``presets`` (per-task settings as data: paper / fast / quality / auto) and
``tasks`` (denoise, inpaint, super_resolve, dejpeg: objective + preset) all import torch;
this package's ``__init__`` does not, so ``import engine.dip`` stays cheap. The op layer
imports ``engine.dip.tasks`` lazily, when a DIP op actually runs.
"""
