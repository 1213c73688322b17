"""One test per msal private member that mssendmail uses (graph/msal_compat.py).

Each fails with the member's name when an msal upgrade removes or changes it;
then adapt mssendmail/graph/msal_compat.py (and only it) before raising the pin.
"""

from __future__ import annotations

import re
from pathlib import Path

import msal
import msal.individual_cache
import msal.throttled_http_client

from mssendmail.graph import msal_compat

COMPAT = Path(msal_compat.__file__)


def fail(member: str, why: str) -> str:
    return (
        f"msal {msal.__version__}: {member} {why}; adapt mssendmail/graph/msal_compat.py "
        "before raising the pin in pyproject.toml"
    )


def test_the_member_list_is_what_the_adapter_imports() -> None:
    imported = {
        f"{module}.{name}"
        for module, name in re.findall(r"from (msal\.\w+) import (\w+)", COMPAT.read_text())
    }
    assert imported <= set(msal_compat.PRIVATE_MEMBERS)
    assert len(msal_compat.PRIVATE_MEMBERS) == 2


def test_throttled_http_client_NormalizedResponse() -> None:
    member = "msal.throttled_http_client.NormalizedResponse"
    cls = getattr(msal.throttled_http_client, "NormalizedResponse", None)
    assert cls is not None, fail(member, "is gone")
    response = msal_compat.normalized_response(400, '{"error": "x"}', {"Retry-After": "5"})
    assert isinstance(response, cls), fail(member, "changed")
    assert (response.status_code, response.text) == (400, '{"error": "x"}'), fail(member, "changed")
    assert response.headers == {"retry-after": "5"}, fail(member, "changed")  # msal lowercases


def test_individual_cache__ExpiringMapping__INDEX() -> None:
    member = "msal.individual_cache._ExpiringMapping._INDEX"
    mapping = getattr(msal.individual_cache, "_ExpiringMapping", None)
    assert mapping is not None, fail(member, "is gone")
    assert getattr(mapping, "_INDEX", None) == msal_compat.HTTP_CACHE_INDEX, fail(member, "changed")
    # And msal really keeps its index there in the mapping we persist.
    store: dict[str, object] = {}
    cache = mapping(mapping=store, expires_in=60)
    cache["key"] = "value"
    assert msal_compat.HTTP_CACHE_INDEX in store, fail(member, "is no longer where msal writes")
