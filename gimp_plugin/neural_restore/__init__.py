"""Neural Restore plug-in package: host-neutral filter logic and the engine client.

Stdlib only, and Python 2.7-compatible syntax, because it runs inside GIMP's own Python
(GIMP 3: Python 3 without numpy; GIMP 2.10: Python 2.7 through the gimpfu adapter).
"""
