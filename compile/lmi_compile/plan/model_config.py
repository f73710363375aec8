"""Read only a model's config.json, wherever the model lives: planning needs shapes, not weights.
The config is checked against sane bounds (`check_model_config`) before anything uses it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmi_runtime.errors import ModelFolderError
from lmi_runtime.modelfolder import read_config_file
from lmi_runtime.safepath import safe_join

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_model_config(uri: str, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """config.json of a local folder, `bundled://NAME`, or a hub id (`org/name`, one small download)."""
    if uri.startswith("bundled://"):
        from lmi_compile.sources.bundled import materialize

        return _read_folder(materialize(uri), uri)
    if uri.startswith("s3://"):
        raise ModelFolderError(
            f"planning reads config.json directly from local folders and the hub, not from {uri}",
            hint="run `lmi-compile fetch` first and plan the local folder, or plan the hub id the model came from",
        )
    path = Path(uri).expanduser()
    if path.exists():
        return _read_folder(path, uri)
    if HUB_ID.match(uri):
        return _read_hub(uri, revision, token)
    raise ModelFolderError(f"model source '{uri}' is neither an existing folder nor a hub id (org/name)",
                           hint="check the path, or give a Hugging Face id such as meta-llama/Llama-2-7b-hf")


def _read_folder(folder: Path, uri: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelFolderError(f"model source '{uri}' is a file, not a model folder",
                               hint="point at the folder that holds config.json and the weights")
    config = folder / "config.json"
    if not config.is_file():
        nested = sorted(p.parent for p in folder.glob("*/config.json"))
        where = f" (found one in {nested[0]})" if nested else ""
        raise ModelFolderError(f"model folder {folder} has no config.json{where}",
                               hint="point at a Hugging Face model folder: config.json beside the weights and tokenizer")
    safe_join(folder, "config.json", ModelFolderError, "model file")  # no symlink out of the folder
    return read_config_file(config, uri)


def _read_hub(repo_id: str, revision: str | None, token: str | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from huggingface_hub import constants

    from lmi_runtime.storage.hub import hub_reachable, offline_error

    offline = not constants.HF_HUB_OFFLINE and not hub_reachable()
    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, token=token, local_files_only=offline)
    except LocalEntryNotFoundError as err:
        if offline:  # not cached either: say "offline" now, not after 30 s of retries
            raise offline_error(repo_id) from None
        raise ModelFolderError(f"config.json of hub model '{repo_id}' is not in the local cache and HF_HUB_OFFLINE is set",
                               hint="unset HF_HUB_OFFLINE, or plan a local folder") from err
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise ModelFolderError(
            f"could not read config.json of hub model '{repo_id}'"
            + (f" at revision {revision}" if revision else "") + f": {type(err).__name__}",
            hint="check the id and revision; gated models need HF_TOKEN; without network, plan a local folder",
        ) from err
    return read_config_file(Path(path), repo_id)
