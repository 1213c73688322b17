"""National clouds: which login host, Graph URL and token scope to use.

``CLOUD=global|usgov|dod|china`` picks a pair of hosts; ``AUTHORITY_HOST``
and ``GRAPH_URL`` override either one (tests point both at a local fake).
The token scope always names the cloud's Graph resource, not GRAPH_URL:
a reverse proxy or fake in GRAPH_URL must not change the token's audience.

SECURITY: both endpoints must be https; a token is never sent in clear text.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from mssendmail.config import Config
from mssendmail.errors import ConfigError

# Hosts msal knows; for any other host it would call Microsoft's instance
# discovery endpoint, which a private fake or sovereign proxy cannot answer.
_KNOWN_LOGIN_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
        "login.microsoftonline.de",
    }
)


@dataclass(frozen=True)
class Endpoints:
    """Where to get tokens and where to send mail."""

    authority_host: str  # https://login.microsoftonline.com, no trailing slash
    graph_url: str  # https://graph.microsoft.com, no trailing slash
    graph_resource: str  # the token audience, https://graph.microsoft.com

    @property
    def scope(self) -> str:
        return f"{self.graph_resource}/.default"

    @property
    def instance_discovery(self) -> bool | None:
        """None lets msal decide for hosts it knows; False for any other host."""
        host = urlsplit(self.authority_host).hostname or ""
        return None if host in _KNOWN_LOGIN_HOSTS else False

    def authority(self, tenant: str) -> str:
        return f"{self.authority_host}/{tenant}"


CLOUDS: dict[str, tuple[str, str]] = {
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    "dod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}


def _https_base(key: str, value: str) -> str:
    """An https origin (plus optional path) without a trailing slash; a bare host gets https://."""
    if "://" not in value:
        value = f"https://{value}"
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{key}={value!r} must be an https URL such as https://host")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"{key}={value!r} must be a plain https URL without user, query or #")
    return value.rstrip("/")


def endpoints(cfg: Config) -> Endpoints:
    """The endpoints for this config; ConfigError names the bad key."""
    cloud = cfg.get("CLOUD").lower() or "global"
    if cloud not in CLOUDS:
        raise ConfigError(f"CLOUD={cloud!r} is not known; use one of {', '.join(CLOUDS)}")
    login, graph = CLOUDS[cloud]
    authority = cfg.get("AUTHORITY_HOST")
    graph_url = cfg.get("GRAPH_URL")
    return Endpoints(
        authority_host=_https_base("AUTHORITY_HOST", authority) if authority else login,
        graph_url=_https_base("GRAPH_URL", graph_url) if graph_url else graph,
        graph_resource=graph,
    )
