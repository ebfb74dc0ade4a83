"""The spread key layout (docs/redis-cluster.md, option B): which hash tag each key is
under, so that profiles spread over every shard of a Redis Cluster.

Why buckets: a Redis Cluster runs a script only on keys of one slot. A profile's keys
(state, view, version, records) must change together, so they share a tag: the tag of
the profile's bucket, `{tf.b17}`, bucket = a hash of the entity and the identity
value the profile id was made from, modulo `buckets`. What a commit writes beside a
profile (outbox, expiry index, audience and profile counters, the rules version it
checks, the commit's intent) has one copy per bucket, so that a commit of one
bucket's profiles stays one single-slot script.
An identity's index key cannot be tagged by its profile's bucket (the profile is what
the lookup finds out), so it is tagged by a bucket of its own, chosen so that it is
the bucket of the profile made from that identity (a profile's bucket is that of the
identity value its id was made from): a read by the identity a profile was made from
(a user's `user_id`) resolves the pointer and reads the view in one single-slot
script, as on one Redis. A tombstone is tagged by its digest's bucket, an erase
request's status by its id's, and an applied messageId's dedupe set by the messageId's
(`applied` is asked before the profile is known).

Everything else a deployment stores (API keys, logs, jobs, policies) is never written
by a commit: it stays under the prefix as one hash tag, `{tf}`, as in option A. A
source delete job's count of commands applied is the exception: each bucket's commits
count their own (`KeyLayout.source_job_tallies`, `traitflow.spread_source_jobs`).

A bucket's keys are named by a `KeyLayout` whose prefix is the bucket's tag
(`BucketKeys`): the names, and the table that lists them, stay in
`traitflow.key_layout`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from redis.crc import key_slot

from traitflow.key_layout import KeyLayout

#: buckets the dedupe sets of applied messageIds are spread over at most: `applied`
#: asks each of them for every live time bucket, so each costs a command per batch
MESSAGE_BUCKETS = 32


def _bucket(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode()) % buckets


def made_from(profile_id: str) -> str:
    """The identity value a profile id was made from: the id of a profile made from a
    primary identity is its value, any other's "type:value" (a primary value with a
    colon too: `IdentityRules.profile_id`). The read scripts compare it the same way."""
    _, colon, value = profile_id.partition(":")
    return value if colon else profile_id


@dataclass(frozen=True, slots=True)
class SpreadLayout:
    """`base`: the prefix without braces (`tf`); `buckets`: how many bucket tags."""

    base: str = "tf"
    buckets: int = 1024

    @classmethod
    def of(cls, prefix: str, buckets: int) -> SpreadLayout:
        """From the settings' prefix, tagged (`{tf}`) or not."""
        return cls(prefix.strip("{}"), buckets)

    @property
    def shared(self) -> KeyLayout:
        """The keys no commit writes: under the prefix as one tag, as in option A."""
        return KeyLayout("{" + self.base + "}")

    def tag(self, bucket: int) -> str:
        return "{" + f"{self.base}.b{bucket}" + "}"

    def slot(self, bucket: int) -> int:
        return int(key_slot(self.tag(bucket).encode()))

    def profile_bucket(self, entity: str, profile_id: str) -> int:
        """The bucket of the identity the profile's id was made from
        (`IdentityRules.profile_id`: the value, or "type:value")."""
        return _bucket(f"{entity}:{made_from(profile_id)}", self.buckets)

    def identity_bucket(self, entity: str, index: str, value: str) -> int:
        """By the value alone: an identity's pointer is in the bucket of the profile
        made from it, so that a read by that identity is one single-slot script."""
        return _bucket(f"{entity}:{value}", self.buckets)

    def message_bucket(self, source: str, message_id: str) -> int:
        return _bucket(f"{source}:{message_id}", min(self.buckets, MESSAGE_BUCKETS))

    def keys(self, bucket: int) -> BucketKeys:
        """The keys of bucket `bucket`, and those its commits name elsewhere."""
        return _bucket_keys(self, bucket)

    def of_profile(self, entity: str, profile_id: str) -> BucketKeys:
        return self.keys(self.profile_bucket(entity, profile_id))

    def bucket_of_key(self, key: str) -> int | None:
        """The bucket whose tag `key` is under; None for a key outside every bucket."""
        start = f"{{{self.base}.b"
        if not key.startswith(start):
            return None
        end = key.find("}", len(start))
        number = key[len(start) : end]
        return int(number) if end > 0 and number.isdigit() else None


@dataclass(frozen=True, slots=True)
class BucketKeys(KeyLayout):
    """A bucket's `KeyLayout`: its prefix is the bucket's tag, so the per-bucket copies
    (outbox, expiry index, counters, rules version, intents) are the bucket's; a key of
    a given profile, identity, tombstone or erase request is under that one's bucket,
    whichever bucket's layout names it."""

    spread: SpreadLayout = field(default_factory=SpreadLayout)

    def state(self, entity: str, profile_id: str) -> str:
        return KeyLayout.state(self._profile(entity, profile_id), entity, profile_id)

    def view(self, entity: str, profile_id: str) -> str:
        return KeyLayout.view(self._profile(entity, profile_id), entity, profile_id)

    def version(self, entity: str, profile_id: str) -> str:
        return KeyLayout.version(self._profile(entity, profile_id), entity, profile_id)

    def record(self, entity: str, collection: str, profile_id: str) -> str:
        keys = self._profile(entity, profile_id)
        return KeyLayout.record(keys, entity, collection, profile_id)

    def index(self, entity: str, index: str, value: str) -> str:
        bucket = self.spread.identity_bucket(entity, index, value)
        return f"{self.spread.tag(bucket)}:i:{entity}:{index}:{value}"

    def tombstone(self, entity: str, digest: str) -> str:
        bucket = _bucket(f"{entity}:{digest}", self.spread.buckets)
        return f"{self.spread.tag(bucket)}:t:{entity}:{digest}"

    def erasure(self, request: str) -> str:
        bucket = _bucket(request, self.spread.buckets)
        return f"{self.spread.tag(bucket)}:er:{request}"

    def source_job(self, job_id: str) -> str:
        return self.spread.shared.source_job(job_id)

    def _profile(self, entity: str, profile_id: str) -> KeyLayout:
        return _tagged(self.spread, self.spread.profile_bucket(entity, profile_id))


#: layouts made once per bucket: a commit names thousands of keys
@lru_cache(maxsize=65_536)
def _bucket_keys(spread: SpreadLayout, bucket: int) -> BucketKeys:
    return BucketKeys(spread.tag(bucket), spread=spread)


@lru_cache(maxsize=65_536)
def _tagged(spread: SpreadLayout, bucket: int) -> KeyLayout:
    return KeyLayout(spread.tag(bucket))
