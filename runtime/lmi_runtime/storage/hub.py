"""Hugging Face hub source: list the repository, choose the files (modelfolder's rules:
safetensors first, pickle only when allowed, no GGUF), then `snapshot_download` only those.
Downloads into `dest` resume when re-run with the same `dest`. The token goes to
huggingface_hub and nowhere else (default: HF_TOKEN / the saved login)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lmi_runtime.errors import ModelFolderError, StorageError
from lmi_runtime.modelfolder import select_model_files

ListFiles = Callable[[], list[str]]


def hub_download(
    repo_id: str,
    dest: Path,
    revision: str | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    list_files: ListFiles | None = None,
) -> list[str]:
    """Download the chosen files of `repo_id` into `dest`; return their names."""
    from huggingface_hub import HfApi, constants, snapshot_download

    source = f"{repo_id}@{revision}" if revision else repo_id
    with _hub_errors(source):
        if constants.HF_HUB_OFFLINE and list_files is None:
            return _from_cache(repo_id, dest, revision, source, allow_pickle, trust_remote_code)
        if list_files is None and not hub_reachable():
            raise offline_error(source)
        files = (list_files or (lambda: HfApi(token=token).list_repo_files(repo_id, revision=revision)))()
        selected = select_model_files(files, source, allow_pickle, trust_remote_code)
        snapshot_download(repo_id, revision=revision, token=token, local_dir=dest, allow_patterns=selected)
        shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
        return selected


def _from_cache(repo_id, dest: Path, revision, source, allow_pickle, trust_remote_code) -> list[str]:
    """HF_HUB_OFFLINE: the same selection, applied to the snapshot already in the local cache."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    selected = select_model_files(files, source, allow_pickle, trust_remote_code)
    dest.mkdir(parents=True, exist_ok=True)
    for name in selected:
        shutil.copyfile(snapshot / name, dest / name)  # the cache holds symlinks to blobs: copy content
    return selected


@contextmanager
def _hub_errors(source: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into StorageError with a hint (never echoing a token)."""
    from huggingface_hub import errors

    hints = [
        (errors.GatedRepoError, "is gated", "accept its license on huggingface.co and set HF_TOKEN"),
        (errors.RepositoryNotFoundError, "was not found (or is private)", "check the repo id; for a private repo set HF_TOKEN"),
        (errors.RevisionNotFoundError, "has no such revision", "check --revision (a branch, tag or commit)"),
        (errors.LocalEntryNotFoundError, "is not in the local cache and HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE or download it once while online"),
        (errors.HfHubHTTPError, "could not be downloaded", "check the network and HF_TOKEN; re-run to resume"),
    ]
    try:
        yield
    except (ModelFolderError, StorageError):
        raise
    except Exception as err:
        for cls, what, hint in hints:
            if isinstance(err, cls):
                raise StorageError(f"Hugging Face repo {source} {what}", hint=hint) from None
        if isinstance(err, OSError):
            raise StorageError(f"downloading {source} from the Hugging Face hub failed: {type(err).__name__}", hint="check the network; re-run to resume") from None
        raise


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick look (DNS + TCP connect to the hub endpoint) before huggingface_hub's
    retries, which take 20-40 s to give up when the machine is offline."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("HTTP_PROXY"):
        return True  # through a proxy the hub host need not resolve here: let the client try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(source: str) -> StorageError:
    from huggingface_hub import constants

    return StorageError(
        f"cannot reach the Hugging Face hub ({constants.ENDPOINT}) to get {source}: this machine looks offline",
        hint="check the network (or HTTPS_PROXY); to use models already in the local cache set HF_HUB_OFFLINE=1; "
        "or give a local folder / s3:// source",
    )
