"""Which hosts may receive the app's credentials.

A BES key, an endpoint key or a managed-identity token goes to whatever host a URL names, so every
URL the app calls with one is checked here, at start (settings) and again where a service hands us a
URL to follow (ARM operations). Accepted:

* the Azure ML Studio (classic) and Azure Resource Manager hosts of the public and sovereign clouds
  (the lists below, each with its public source in ``docs/protocol.md``);
* loopback (``localhost``, ``127.0.0.0/8``, ``::1``), for the local emulator;
* names listed in ``EXTRA_ALLOWED_HOSTS`` (exact names, or ``*.domain`` for its subdomains).

Never, not even when listed: an IP address that is not loopback — private, link-local (the instance
metadata service at 169.254.169.254), shared, reserved or public — since no Azure service is
addressed by IP.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

# Classic Studio runtime (BES/RRS): <region>.services.azureml.<tld>. Compute instances live under
# *.instances.azureml.net and are user-controlled machines: never a runtime host.
CLASSIC_RUNTIME = re.compile(r"[a-z0-9-]+\.services\.azureml\.(net|de|cn)")
# Classic web-service management API: management.azureml.net, or <region>.management.azureml.<tld>.
CLASSIC_MANAGEMENT = re.compile(r"(management\.azureml\.net|[a-z0-9-]+\.management\.azureml\.(net|de|cn))")
# Azure Resource Manager: public, US Government, China (21Vianet), Germany (closed, still spelled).
ARM_HOSTS = frozenset(
    {
        "management.azure.com",
        "management.usgovcloudapi.net",
        "management.chinacloudapi.cn",
        "management.microsoftazure.de",
    }
)
# Storage (identity-based AzureWebJobsStorage): <account>.<service>.core.<cloud suffix>.
STORAGE = re.compile(
    r"[a-z0-9]{3,24}\.(blob|queue|table|dfs)\.core\.(windows\.net|usgovcloudapi\.net|chinacloudapi\.cn|cloudapi\.de)"
)
# Azure ML (v2) data planes a workspace names for itself: its MLflow tracking host
# (<region>.api.azureml.ms; .api.ml.azure.us / .cn in the sovereign clouds) and endpoints' scoring
# hosts (<endpoint>.<region>.inference.ml.azure.com / .us / .cn).
AZUREML_MLFLOW = re.compile(r"[a-z0-9-]+\.(api\.azureml\.ms|api\.ml\.azure\.(us|cn))")
# Event Grid topics: <topic>.<region>-1.eventgrid.azure.net (.azure.us, .azure.cn). Webhooks have no
# known host: only EXTRA_ALLOWED_HOSTS (or loopback) may receive one.
EVENTGRID = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+\.eventgrid\.azure\.(net|us|cn)")
AZUREML_INFERENCE = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+\.inference\.ml\.azure\.(com|us|cn)")
KINDS = {
    "storage": lambda host: bool(STORAGE.fullmatch(host)),
    "bes": lambda host: bool(CLASSIC_RUNTIME.fullmatch(host)),
    "classic": lambda host: bool(CLASSIC_MANAGEMENT.fullmatch(host)),
    "arm": lambda host: host in ARM_HOSTS,
    "azureml_mlflow": lambda host: bool(AZUREML_MLFLOW.fullmatch(host)),
    "azureml_inference": lambda host: bool(AZUREML_INFERENCE.fullmatch(host)),
    "eventgrid": lambda host: bool(EVENTGRID.fullmatch(host)),
    "webhook": lambda host: False,
}
_NAME = re.compile(r"(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class HostRefused(ValueError):
    """A URL names a host the app will not send credentials to; the message says why."""


def parse_extra(raw: str | None) -> tuple[str, ...]:
    """``EXTRA_ALLOWED_HOSTS``: comma-separated DNS names or ``*.domain`` patterns (no IP addresses)."""
    entries = tuple(e.strip().lower().rstrip(".") for e in (raw or "").split(",") if e.strip())
    for entry in entries:
        if _ip(entry.removeprefix("*.")) is not None:
            raise HostRefused(f"{entry!r} is an IP address; allow hosts by DNS name")
        if not _NAME.fullmatch(entry):
            raise HostRefused(f"{entry!r} is not a host name or a '*.domain' pattern")
    return entries


def check(host: str | None, kind: str, extra: Iterable[str] = ()) -> str:
    """``host`` (lower-cased) if credentials of ``kind`` (``bes``, ``classic``, ``arm``, ``storage``) may go there;
    else :class:`HostRefused` saying why."""
    name = (host or "").lower().rstrip(".")
    if not name:
        raise HostRefused("the URL has no host")
    if is_loopback(name):
        return name
    address = _ip(name)
    if address is not None:
        raise HostRefused(f"{name} is an IP address ({_describe(address)}); Azure services are addressed by name")
    if KINDS[kind](name) or any(_listed(name, entry) for entry in extra):
        return name
    raise HostRefused(
        f"{name} is not a known Azure ML host for {kind} calls (see docs/protocol.md); "
        "add it to EXTRA_ALLOWED_HOSTS if it really is one"
    )


def same_service(host: str | None, service_host: str) -> bool:
    """Whether ``host`` (a URL a service handed us, e.g. an ARM operation) is ``service_host`` or one of
    its regional subdomains — and still a host credentials may go to."""
    name = (host or "").lower().rstrip(".")
    own = service_host.lower().rstrip(".")
    if is_loopback(own):
        return name == own
    return _ip(name) is None and (name == own or name.endswith("." + own))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def _listed(name: str, entry: str) -> bool:
    return name.endswith(entry[1:]) if entry.startswith("*.") else name == entry


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _describe(address) -> str:
    if address.is_link_local:
        return "link-local: the instance metadata service lives there"
    if address.is_private:
        return "private"
    return "not loopback"
