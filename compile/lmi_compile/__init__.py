"""lmi_compile: the ahead-of-time pipeline (plan → fetch → quantize → compile → publish)."""

__version__ = "0.1.0"
