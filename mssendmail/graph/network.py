"""How the worker, `check` and `test` reach the identity platform and Graph:
HTTPS_PROXY, NO_PROXY and CA_BUNDLE from the config.

Job: one place that turns the three keys into what requests needs, for the
Graph session and for the session msal uses for token requests. Each key
may be set in /etc/mssendmail/.env (the worker under systemd has no other
environment) or in the environment (it wins, like every key). When a key
is unset, the standard variables still count: https_proxy/no_proxy in lower
case, and REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE for the CA.

The environment is read once, here, and the sessions run with trust_env off:
requests would otherwise re-read it (and ~/.netrc) on every request.

A proxy URL may hold a user and password (http://user:pass@proxy:3128);
``describe()`` never shows them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from mssendmail.config import Config
from mssendmail.errors import ConfigError


@dataclass(frozen=True)
class Network:
    proxy: str  # "" for a direct connection
    no_proxy: str
    verify: bool | str  # True: the system/certifi CAs; a path: that bundle

    def proxies_for(self, url: str) -> dict[str, str | None]:
        """The requests ``proxies`` for one URL; None values switch a proxy off."""
        if not self.proxy or _bypass(url, self.no_proxy):
            return {"https": None, "http": None}
        return {"https": self.proxy, "http": self.proxy}

    def describe(self, url: str) -> str:
        """'proxy http://proxy:3128, CA /etc/ssl/corp.pem' without any password."""
        proxy = self.proxies_for(url).get("https")
        where = f"proxy {_without_password(proxy)}" if proxy else "no proxy"
        ca = "system CAs" if self.verify is True else f"CA {self.verify}"
        return f"{where}, {ca}"


def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


def settings(cfg: Config) -> Network:
    """The network settings of a config; ConfigError names a bad key."""
    proxy = cfg.get("HTTPS_PROXY") or _env("HTTPS_PROXY", "https_proxy")
    if proxy:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"HTTPS_PROXY={_without_password(proxy)!r} is not a proxy URL like "
                "http://proxy.example.com:3128"
            )
        proxy = parts.geturl()
    no_proxy = cfg.get("NO_PROXY") or _env("NO_PROXY", "no_proxy")
    ca = cfg.get("CA_BUNDLE") or _env("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    if ca and not os.access(ca, os.R_OK):
        raise ConfigError(f"CA_BUNDLE={ca} cannot be read; give a PEM file of CA certificates")
    return Network(proxy=proxy, no_proxy=no_proxy, verify=ca or True)


def from_environment() -> Network:
    """The settings of an empty config: the standard variables only."""
    return settings(Config({}))


def _bypass(url: str, no_proxy: str) -> bool:
    from requests.utils import should_bypass_proxies

    return bool(no_proxy) and bool(should_bypass_proxies(url, no_proxy=no_proxy))


def _without_password(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()
