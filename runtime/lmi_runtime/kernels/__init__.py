"""GPU kernels of the runtime (Triton), each with a plain-torch twin for the CPU."""
