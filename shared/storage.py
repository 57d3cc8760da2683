"""Azure Storage: clients built from the connection setting, blob references and scoped SAS tokens.

BES never receives the account key: it gets ``BaseLocation`` + ``RelativeLocation`` + ``SasBlobToken``
references, each a blob-scoped, short-lived SAS with only the permissions that blob needs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

# Tolerance for clock skew between this app and the storage service when a SAS starts.
SAS_CLOCK_SKEW = dt.timedelta(minutes=5)


def parse_connection_string(value: str) -> dict[str, str]:
    """Split ``Key=Value;...`` (values may contain ``=``, as base64 keys do)."""
    parts = {}
    for item in value.split(";"):
        if "=" in item:
            key, _, val = item.partition("=")
            parts[key.strip()] = val.strip()
    return parts


@dataclass(frozen=True)
class BlobRef:
    """One version of a blob: what a run is trained on. Identified by container, name and ETag."""

    container: str
    name: str
    etag: str
    size: int
    last_modified: dt.datetime

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"


class Storage:
    """The storage account behind ``AzureWebJobsStorage``: blobs for data and models, tables for state."""

    def __init__(self, connection_string: str) -> None:
        self._connection_string = connection_string
        parts = parse_connection_string(connection_string)
        self.account_name = parts["AccountName"]
        self._account_key = parts["AccountKey"]
        self._queues: dict = {}

    @cached_property
    def blobs(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self._connection_string)

    @cached_property
    def tables(self) -> TableServiceClient:
        return TableServiceClient.from_connection_string(self._connection_string)

    @property
    def blob_base_location(self) -> str:
        """The blob endpoint with a trailing slash, as BES ``BaseLocation`` expects."""
        return self.blobs.url.rstrip("/") + "/"

    def blob_ref(self, container: str, name: str) -> BlobRef:
        """Read a blob's identity (ETag, size) from its properties without reading its content."""
        props = self.blobs.get_blob_client(container, name).get_blob_properties()
        return blob_ref_from_properties(container, name, props)

    def ensure_container(self, name: str) -> None:
        with contextlib.suppress(ResourceExistsError):
            self.blobs.create_container(name)

    def blob_url(self, container: str, name: str) -> str:
        """The blob's plain URL (no SAS), path-encoded."""
        return f"{self.blob_base_location}{quote(container)}/{quote(name)}"

    def queue(self, name: str):
        """A queue client that base64-encodes messages, as the Functions host expects by default.

        One client per queue for the life of this object; the queue is created on first use.
        """
        if name not in self._queues:
            from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

            client = QueueClient.from_connection_string(
                self._connection_string,
                name,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._queues[name] = client
        return self._queues[name]

    def blob_sas(
        self, container: str, name: str, permission: str, expiry: dt.datetime, now: dt.datetime | None = None
    ) -> str:
        """A SAS token (``?sv=...``) for exactly one blob with ``permission`` (e.g. ``r`` or ``cw``)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        token = generate_blob_sas(
            account_name=self.account_name,
            container_name=container,
            blob_name=name,
            account_key=self._account_key,
            permission=BlobSasPermissions.from_string(permission),
            start=now - SAS_CLOCK_SKEW,
            expiry=expiry,
            protocol="https" if self.blob_base_location.startswith("https") else "https,http",
        )
        return "?" + token


def blob_ref_from_properties(container: str, name: str, props) -> BlobRef:
    """Build a :class:`BlobRef` from ``azure.storage.blob.BlobProperties``."""
    return BlobRef(
        container=container,
        name=name,
        etag=str(props.etag).strip('"'),
        size=int(props.size or 0),
        last_modified=props.last_modified,
    )
