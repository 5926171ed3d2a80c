"""The ONNX Runtime backend: trained nets (``models/*.onnx`` + ``*.json`` cards) run in tiles.

``runner`` (sessions, providers, whole-image inference) and ``tiling`` (seamless overlapping
tiles). Nothing on this path imports torch: an engine without the DIP extra still upscales
and sharpens.
"""
