"""The one place that touches msal's private internals.

The worker keeps msal's ``http_cache`` (authority discovery documents and
cached error replies) on disk, so a ``--once`` run from a timer does not
rediscover the authority every minute. msal documents ``http_cache`` as a
picklable mapping, but pickle is not something to read back from a spool
directory; we store JSON instead, which needs two private names:

- ``msal.throttled_http_client.NormalizedResponse``: the value type msal
  stores and expects back in the mapping;
- ``msal.individual_cache._ExpiringMapping._INDEX``: the key (``"_index_"``)
  under which msal keeps its expiry index.

pyproject.toml pins msal below the next minor version (CI tests 1.39), and
tests/test_msal_compat.py fails loudly when an upgrade moves either name.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

# msal.individual_cache._ExpiringMapping._INDEX; a test checks they agree.
HTTP_CACHE_INDEX = "_index_"

PRIVATE_MEMBERS = (
    "msal.throttled_http_client.NormalizedResponse",
    "msal.individual_cache._ExpiringMapping._INDEX",
)


def normalized_response(status_code: int, text: str, headers: dict[str, str]) -> Any:
    """A cached reply in the form msal's http_cache holds (imports msal: call lazily)."""
    from msal.throttled_http_client import NormalizedResponse

    return NormalizedResponse(SimpleNamespace(status_code=status_code, text=text, headers=headers))
