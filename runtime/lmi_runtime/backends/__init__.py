"""Model backends behind the engine's `Backend` interface (see `base.py`)."""
