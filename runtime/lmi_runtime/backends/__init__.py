"""Model backends behind the engine's `Backend` interface (`lmi_runtime.engine.backend`)."""
