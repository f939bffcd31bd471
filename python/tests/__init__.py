"""The dspex_bridge test suite."""

from __future__ import annotations
