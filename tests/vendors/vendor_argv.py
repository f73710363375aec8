"""Reading command lines in the vendor tests (a uniquely named module: every test area has a conftest)."""

from __future__ import annotations


def flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("-")]


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]
