"""Read and write blobs through an ``AzureBlobDataReference``, the way BES does: with only what the
reference carries (a SAS, or a connection string), never with credentials of its own."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

_CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


class ReferenceError_(ValueError):
    """The reference is malformed; ``code`` is the BES detail code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BlobReference:
    container: str
    blob: str
    base_location: str | None
    sas_token: str | None
    connection_string: str | None

    @property
    def relative_location(self) -> str:
        return f"{self.container}/{self.blob}"

    @property
    def extension(self) -> str:
        name = self.blob.rsplit("/", 1)[-1]
        return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""

    def client(self) -> BlobClient:
        # Local storage answers at once or not at all: fail in seconds, not after the SDK's ~90 s of retries.
        options = {"retry_total": 1, "connection_timeout": 5}
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **options).get_blob_client(
                self.container, self.blob
            )
        return BlobClient(
            account_url=self.base_location.rstrip("/"),
            container_name=self.container,
            blob_name=self.blob,
            credential=self.sas_token.lstrip("?"),
            **options,
        )

    def host(self) -> str:
        """The storage host this reference points at."""
        return (urlsplit(self.client().url).hostname or "").lower()

    def is_local(self) -> bool:
        """Whether the emulator can reach it: only storage on this machine (Azurite), never the internet."""
        return self.host() in ("127.0.0.1", "localhost", "::1")

    def sas_expiry(self) -> dt.datetime | None:
        if not self.sas_token:
            return None
        values = parse_qs(self.sas_token.lstrip("?")).get("se")
        if not values:
            return None
        try:
            return dt.datetime.fromisoformat(values[0].replace("Z", "+00:00"))
        except ValueError:
            return None

    def result(self, now: dt.datetime) -> dict:
        """The ``Results`` entry BES reports for an output: a reference someone can read."""
        if self.connection_string:
            parts = dict(p.split("=", 1) for p in self.connection_string.split(";") if "=" in p)
            service = BlobServiceClient.from_connection_string(self.connection_string)
            token = generate_blob_sas(
                account_name=parts["AccountName"],
                container_name=self.container,
                blob_name=self.blob,
                account_key=parts["AccountKey"],
                permission=BlobSasPermissions(read=True),
                start=now - dt.timedelta(minutes=5),
                expiry=now + dt.timedelta(hours=24),
            )
            return {
                "ConnectionString": None,
                "RelativeLocation": self.relative_location,
                "BaseLocation": service.url.rstrip("/") + "/",
                "SasBlobToken": "?" + token,
            }
        return {
            "ConnectionString": None,
            "RelativeLocation": self.relative_location,
            "BaseLocation": self.base_location,
            "SasBlobToken": self.sas_token,
        }


def parse_reference(value: object, what: str) -> BlobReference:
    """Validate one ``AzureBlobDataReference`` (PascalCase keys, as BES requires)."""
    if not isinstance(value, dict):
        raise ReferenceError_("RequestBodyInvalid", f"The blob reference for {what} is not an object.")
    relative = value.get("RelativeLocation")
    if not isinstance(relative, str) or not relative.strip("/"):
        raise ReferenceError_("MissingInputBlobInformation", f"The blob reference for {what} has no RelativeLocation.")
    container, _, blob = relative.lstrip("/").partition("/")
    if not blob or not _CONTAINER_RE.fullmatch(container):
        raise ReferenceError_(
            "InputBlobRelativeLocationInvalid",
            f"The blob reference: {relative} for {what} is not of the form container/blob.",
        )
    connection = value.get("ConnectionString")
    base, sas = value.get("BaseLocation"), value.get("SasBlobToken")
    if connection:
        if "AccountName=" not in connection or "AccountKey=" not in connection:
            raise ReferenceError_("InvalidBlobConnectionString", f"The connection string for {what} is invalid.")
        return BlobReference(container, blob, None, None, connection)
    if not (isinstance(base, str) and base.startswith(("http://", "https://")) and isinstance(sas, str) and sas):
        raise ReferenceError_(
            "MissingInputBlobInformation",
            f"The blob reference for {what} needs a ConnectionString or a BaseLocation with a SasBlobToken.",
        )
    return BlobReference(container, blob, base, sas if sas.startswith("?") else "?" + sas, None)
