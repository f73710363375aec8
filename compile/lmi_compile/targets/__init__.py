"""Compile targets: each turns a (possibly quantized) model folder into an artifact folder
laid out per rank, and says which hardware and toolchain the artifact is tied to."""
