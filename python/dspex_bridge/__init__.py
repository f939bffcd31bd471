"""DSPex Python worker: runs DSPy programs for Rust services over a framed pipe protocol."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
