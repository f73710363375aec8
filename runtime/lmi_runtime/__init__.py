"""lmi_runtime: the slim runtime that serves artifacts prepared by lmi_compile.

It also owns what both sides share: configuration, storage, and the artifact manifest.
It never imports lmi_compile.
"""

__version__ = "0.1.0"
