"""Neural Restore engine: image restoration ops behind a CLI and the plug-in's protocol."""

__version__ = "0.1.0"
