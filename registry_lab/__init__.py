"""The one registry lab: start Debian's docker-registry on loopback, seed sentinel images, damage storage.

Serves the test suite, the demo and the benchmarks. Not installed with the plugin.
"""

from .images import Image, ImageSet, Layer, seed_sentinels
from .registry import LocalRegistry, SilentServer, free_port

__all__ = ["Image", "ImageSet", "Layer", "LocalRegistry", "SilentServer", "free_port", "seed_sentinels"]
