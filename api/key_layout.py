"""The API's own Redis keys: API key records and their rate-limit buckets.

Only the API (and the `traitflow keys` command, through `api.keys`) reads or writes
them, so the API names them, not the core's `traitflow.key_layout.KeyLayout`. They live
under the same prefix (`Settings.key_prefix`), so one prefix still holds, and one
SCAN pattern (`KeyLayout.all_keys`) still finds, everything a deployment stores. For
prefix `tf`:

    tf:k:{key_id}   string  API key record (JSON: name, scopes, sha256 of its secret;
                            never the secret)
    tf:ks           set     ids of the API keys (for `traitflow keys list`)
    tf:r:{key_id}   hash    the API key's rate-limit token bucket
    tf:r:wk.{sha}   hash    an HTTP ingest write key's bucket (`api.ingest`; its SHA-256:
                            no API key id has a `.`), when write keys are rate limited

The second parts (`k`, `ks`, `r`) are listed in `traitflow.store`'s layout as the
API's, so the core takes no key of them; tests/unit/test_keys.py checks that no core
key collides with these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiKeyLayout:
    prefix: str = "tf"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:k:{key_id}"

    def api_key_ids(self) -> str:
        return f"{self.prefix}:ks"

    def rate_bucket(self, key_id: str) -> str:
        return f"{self.prefix}:r:{key_id}"
