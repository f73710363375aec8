"""fetch: a model source → a validated model folder (`ModelDir`).

Sources: a Hugging Face repo id, `s3://bucket/prefix` or `s3://…/model.tar.gz`, a local folder
or archive, or `bundled://smollm2`. Files land in a staging folder next to `out`, the folder is
validated there (config, tokenizer, weights, shard index, remote code), and only then moved to
`out`, so a failed fetch never leaves something that looks like a model. The staging name is
fixed per destination so that an interrupted hub download resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

from lmi_compile.recipe import SourceSpec
from lmi_compile.sources.bundled import is_bundled, materialize
from lmi_runtime.errors import ConfigError, ModelFolderError, StorageError
from lmi_runtime.modelfolder import ModelDir, select_model_files, validate_model_folder
from lmi_runtime.safepath import relpath_problem, safe_join
from lmi_runtime.storage import Location, Transfer, open_storage, parse_uri
from lmi_runtime.storage.hub import hub_download

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
PROVENANCE = ".lmi-fetch.json"  # marks a folder this stage wrote, so a re-fetch may replace it


def fetch(spec: SourceSpec, out: Path, s3_options=None, token: str | None = None) -> ModelDir:
    out = out.expanduser().absolute()
    _check_destination(out)
    location = None if is_bundled(spec.uri) else parse_uri(spec.uri, hub=True)
    if spec.revision and (location is None or location.kind != "hub"):
        raise ConfigError(f"a revision was given for {spec.uri}, which is not a Hugging Face repo", hint="revisions apply to hub sources only; drop --revision")
    staging = out.parent / f".{out.name}.partial"
    provenance = json.dumps({"uri": spec.uri, "revision": spec.revision}, sort_keys=True)
    if (staging / PROVENANCE).exists() and (staging / PROVENANCE).read_text() != provenance:
        shutil.rmtree(staging)  # left over from a different source: do not mix files
    staging.mkdir(parents=True, exist_ok=True)
    (staging / PROVENANCE).write_text(provenance)
    try:  # a StorageError keeps the staging folder, so a re-run resumes a hub download
        _download(spec, location, staging, s3_options, token)
        model = validate_model_folder(staging, spec.allow_pickle, spec.trust_remote_code, source=spec.uri)
    except ModelFolderError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(staging, out)
    return replace(model, path=out)


def source_identity(spec: SourceSpec, s3_options=None) -> dict | None:
    """What pins the content of a source worth caching (for the fetch stage's cache key): the key,
    size and ETag of each S3 object; the name, size and mtime of each file of the bundled model.
    None for the rest: a hub model is kept by huggingface_hub's own cache, and a local folder is
    read in place (a cached copy would only double its disk use). A cached entry is still checked
    against its recorded sha256 before it is used."""
    if is_bundled(spec.uri):
        folder = materialize(spec.uri)
        return {"files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file()]}
    location = parse_uri(spec.uri, hub=True)
    if location.kind != "s3":
        return None
    listing = open_storage(location, s3_options).list()
    return {"objects": sorted((k, v.size, v.version) for k, v in listing.items())}


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PROVENANCE).exists())):
        raise ConfigError(
            f"{out} already exists and was not written by lmi-compile fetch",
            hint="choose a new or empty --out folder (fetch replaces only folders it wrote itself)",
        )


def _download(spec: SourceSpec, location: Location | None, staging: Path, s3_options, token: str | None) -> None:
    uri = spec.uri
    if location is None:
        _copy_selected(materialize(uri), staging, spec, link=True)
    elif location.kind == "hub":
        hub_download(location.repo_id, staging, spec.revision, token, spec.allow_pickle, spec.trust_remote_code)
    elif location.kind == "s3" and location.prefix.endswith(ARCHIVE_SUFFIXES):
        parent, _, name = location.prefix.rpartition("/")
        storage = open_storage(f"s3://{location.bucket}/{parent}", s3_options)
        size = storage.list().get(name)
        if size is None:
            raise StorageError(f"{uri} does not exist", hint="check the bucket and key of the archive")
        with tempfile.TemporaryDirectory(prefix=".lmi-archive-", dir=staging.parent) as tmp:
            archive = Path(tmp) / name
            storage.download([Transfer(archive, name, size.size)])
            extract_archive(archive, staging)
    elif location.kind == "s3":
        storage = open_storage(location, s3_options)
        listing = storage.list()
        if not listing:
            raise StorageError(f"there are no objects under {uri}", hint="check the prefix; an archive must end in .tar.gz, .tgz or .tar")
        chosen = select_model_files(list(listing), uri, spec.allow_pickle, spec.trust_remote_code)
        storage.download([Transfer(safe_join(staging, k, StorageError, "object key"), k, listing[k].size) for k in chosen])
    elif location.path.is_file() and location.path.name.endswith(ARCHIVE_SUFFIXES):
        extract_archive(location.path, staging)
    elif location.path.is_dir():
        _copy_selected(location.path, staging, spec, link=False)
    else:
        raise ModelFolderError(f"model source {uri} does not exist", hint="give a local folder, an s3:// URI, a hub repo id (org/name) or bundled://smollm2")


def _copy_selected(src: Path, staging: Path, spec: SourceSpec, link: bool) -> None:
    """Copy the files the selection rules keep; `link` hard-links our own read-only cache.
    A symlink that leads out of `src` is refused: its target is not part of the model."""
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    for name in select_model_files(names, spec.uri, spec.allow_pickle, spec.trust_remote_code):
        safe_join(src, name, ModelFolderError, "model file")
        target = staging / name
        target.unlink(missing_ok=True)
        try:
            if not link:
                raise OSError
            os.link(src / name, target)
        except OSError:
            shutil.copy2(src / name, target)


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a model tarball, refusing members that escape `dest` or are links or devices;
    a tarball holding one top folder (`model/config.json`) is unwrapped."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name.removeprefix("./")
                if name in ("", "."):
                    continue
                problem = relpath_problem(name.rstrip("/"))
                if problem or not (member.isfile() or member.isdir()):
                    why = problem or "links and special files are not allowed in a model archive"
                    raise ModelFolderError(f"refusing archive {archive.name}: member {member.name!r} ({why})", hint="the archive is unsafe; build it from a plain model folder (tar -czf model.tar.gz -C folder .)")
            with tempfile.TemporaryDirectory(prefix=".lmi-extract-", dir=dest) as tmp:
                tar.extractall(tmp, members=members, filter="data")
                root = Path(tmp)
                entries = list(root.iterdir())
                if len(entries) == 1 and entries[0].is_dir() and not (root / "config.json").exists():
                    root = entries[0]
                for item in root.iterdir():
                    target = dest / item.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    os.replace(item, target)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ModelFolderError(f"cannot extract {archive.name}: {err}", hint="the archive is corrupt or not a tar/tar.gz file") from None


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "folder")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
