"""Azure Storage: clients built from the connection setting, blob references and scoped SAS tokens.

BES never receives the account key: it gets ``BaseLocation`` + ``RelativeLocation`` + ``SasBlobToken``
references, each a blob-scoped, short-lived SAS with only the permissions that blob needs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote, urlsplit

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from shared.redact import hold, hold_sas

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


# A user delegation key (and so any SAS signed with it) lives at most seven days.
DELEGATION_KEY_LIFETIME = dt.timedelta(days=7)


class Storage:
    """The storage account behind ``AzureWebJobsStorage``: blobs for data and models, tables for state,
    queues for commands.

    Either a connection string (account key: SAS signed with it), or identity-based (service URIs and
    an Azure AD credential: SAS signed with a user delegation key, at most seven days).
    """

    def __init__(self, connection_string: str | None = None, *, identity=None, credential=None) -> None:
        self._connection_string = connection_string
        self._identity, self._credential = identity, credential
        self._queues: dict = {}
        self._containers: set[str] = set()
        self._delegation_key = None
        if connection_string:
            parts = parse_connection_string(connection_string)
            self.account_name = parts["AccountName"]
            self._account_key = parts["AccountKey"]
            hold(self._account_key)
        else:
            if identity is None or credential is None:
                raise ValueError("Storage needs a connection string, or an identity and a credential")
            self.account_name = urlsplit(identity.blob_uri).hostname.split(".")[0]
            self._account_key = None

    @cached_property
    def blobs(self) -> BlobServiceClient:
        if self._connection_string:
            return BlobServiceClient.from_connection_string(self._connection_string)
        return BlobServiceClient(self._identity.blob_uri, credential=self._credential)

    @cached_property
    def tables(self) -> TableServiceClient:
        if self._connection_string:
            return TableServiceClient.from_connection_string(self._connection_string)
        return TableServiceClient(self._identity.table_uri, credential=self._credential)

    @property
    def blob_base_location(self) -> str:
        """The blob endpoint with a trailing slash, as BES ``BaseLocation`` expects."""
        return self.blobs.url.rstrip("/") + "/"

    def blob_ref(self, container: str, name: str) -> BlobRef:
        """Read a blob's identity (ETag, size) from its properties without reading its content."""
        props = self.blobs.get_blob_client(container, name).get_blob_properties()
        return blob_ref_from_properties(container, name, props)

    def ensure_container(self, name: str) -> None:
        """Create the container unless this process did (or found it) already."""
        if name in self._containers:
            return
        with contextlib.suppress(ResourceExistsError):
            self.blobs.create_container(name)
        self._containers.add(name)

    def blob_url(self, container: str, name: str) -> str:
        """The blob's plain URL (no SAS), path-encoded."""
        return f"{self.blob_base_location}{quote(container)}/{quote(name)}"

    def queue(self, name: str):
        """A queue client that base64-encodes messages, as the Functions host expects by default.

        One client per queue for the life of this object; the queue is created on first use.
        """
        if name not in self._queues:
            from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

            policies = {
                "message_encode_policy": TextBase64EncodePolicy(),
                "message_decode_policy": TextBase64DecodePolicy(),
            }
            if self._connection_string:
                client = QueueClient.from_connection_string(self._connection_string, name, **policies)
            else:
                client = QueueClient(self._identity.queue_uri, name, credential=self._credential, **policies)
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            self._queues[name] = client
        return self._queues[name]

    def blob_sas(
        self, container: str, name: str, permission: str, expiry: dt.datetime, now: dt.datetime | None = None
    ) -> str:
        """A SAS token (``?sv=...``) for exactly one blob with ``permission`` (e.g. ``r`` or ``cw``).

        Identity-based: a user delegation SAS, whose expiry cannot pass its key's (seven days at most).
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        signing = {"account_key": self._account_key}
        if self._account_key is None:
            key = self.delegation_key(now)
            signing = {"user_delegation_key": key}
            expiry = min(expiry, _parse_time(key.signed_expiry))
        token = generate_blob_sas(
            account_name=self.account_name,
            container_name=container,
            blob_name=name,
            permission=BlobSasPermissions.from_string(permission),
            start=now - SAS_CLOCK_SKEW,
            expiry=expiry,
            protocol="https" if self.blob_base_location.startswith("https") else "https,http",
            **signing,
        )
        hold_sas(token)
        return "?" + token

    def delegation_key(self, now: dt.datetime):
        """A user delegation key valid for the longest SAS we sign, renewed a day before it lapses."""
        key = self._delegation_key
        if key is None or _parse_time(key.signed_expiry) - now < dt.timedelta(days=1):
            key = self.blobs.get_user_delegation_key(now - SAS_CLOCK_SKEW, now + DELEGATION_KEY_LIFETIME)
            hold(key.value)
            self._delegation_key = key
        return key


def _parse_time(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def blob_ref_from_properties(container: str, name: str, props) -> BlobRef:
    """Build a :class:`BlobRef` from ``azure.storage.blob.BlobProperties``."""
    return BlobRef(
        container=container,
        name=name,
        etag=str(props.etag).strip('"'),
        size=int(props.size or 0),
        last_modified=props.last_modified,
    )
