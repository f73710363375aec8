"""CLI commands, one module each; `lmi_compile.cli` registers them on the typer app."""
