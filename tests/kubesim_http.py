"""Raw requests through the official client's own HTTP layer (its urllib3 pool manager).

For what the typed API classes cannot express (bad bodies, arbitrary media types, exact
Status bodies, streaming): ``call(sim, "POST", "/api/v1/...", body, token=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubesim.runner import KubeSim


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


def call(
    sim: KubeSim,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    timeout: float = 30,
    headers: dict[str, str] | None = None,
    retries: bool = False,
) -> Reply:
    """One request; ``retries=True`` keeps urllib3's default retries (which the official
    client uses: it silently retries 429/503 answers that carry Retry-After)."""
    client = sim.api_client(token)
    hdrs = {"Accept": accept}
    token = sim.admin_token if token is None else token
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if body is not None:
        hdrs["Content-Type"] = content_type
        if not isinstance(body, str | bytes):
            body = json.dumps(body)
    hdrs.update(headers or {})
    resp = client.rest_client.pool_manager.request(method, sim.url + path, headers=hdrs,
                                                   body=body, timeout=timeout,
                                                   **({} if retries else {"retries": False}))
    return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.data)
