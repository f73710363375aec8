"""Pipeline stages: each one a function from a typed input to a typed output."""
