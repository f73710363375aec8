"""Relative paths that cannot escape their root.

Every path that comes from outside (a manifest, an object key, a tar member) goes through
`check_relpath` before it is joined to a local folder, and `safe_join` also resolves symlinks,
so a crafted name like `../../.ssh/authorized_keys` or a planted symlink never writes or reads
outside the folder it belongs to.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lmi_runtime.errors import LmiError


def relpath_problem(path: str) -> str | None:
    """Why `path` is not a safe POSIX relative path, or None when it is."""
    if not path:
        return "empty path"
    if "\\" in path:
        return "backslash in path"
    if "\x00" in path:
        return "NUL byte in path"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "absolute path"
    parts = path.split("/")
    if any(part == ".." for part in parts):
        return "'..' component"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' component"
    return None


def check_relpath(path: str, error: type[LmiError], what: str = "path") -> str:
    """Return `path` unchanged if safe, else raise `error` (an LmiError subclass) naming it."""
    problem = relpath_problem(path)
    if problem:
        raise error(
            f"refusing unsafe {what} {path!r}: {problem}",
            hint="paths must be relative POSIX paths inside the folder (no '..', '/' prefix or '\\')",
        )
    return path


def safe_join(root: Path, path: str, error: type[LmiError], what: str = "path") -> Path:
    """`root / path`, refused when the name is unsafe or a symlink makes it resolve outside root."""
    check_relpath(path, error, what)
    joined = root / PurePosixPath(path)
    real_root = root.resolve()
    if not joined.resolve().is_relative_to(real_root):
        raise error(
            f"refusing {what} {path!r}: it resolves outside {root} (through a symlink)",
            hint="remove the symlink; artifacts and model folders must hold plain files",
        )
    return joined
