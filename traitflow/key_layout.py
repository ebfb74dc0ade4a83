"""The Redis key layout: every key traitflow stores, listed in one place.

A deployment's keys all live under one prefix (`Settings.key_prefix`), so that one
SCAN pattern (`KeyLayout.all_keys`) finds everything it stores and two kinds of key
never collide. That holds only if the layout is read in one place: the table below
lists every key, and `KeyLayout` names all of them but the API's own (`api.
key_layout`). A new kind of key is one row here and one method. What the keys hold,
and the commit that writes a profile's keys at once, are `traitflow.store`'s.

Redis layout, for prefix `tf` and entity `user`:

    tf:s:user:{id}                 string  profile state (msgpack)
    tf:v:user:{id}                 string  served view (JSON bytes)
    tf:n:user:{id}                 string  the profile's version (what a commit checks)
    tf:c:user:{collection}:{id}    string  the record of a collection with a field
                                           mapping: "{mapping stamp}:{version}:" then
                                           the record (JSON bytes); served only while
                                           both match (`RECORD`)
    tf:i:user:{index}:{value}      string  -> profile id (one per identity)
    tf:x:user:{topic}/{partition}  zset    profile id, scored by when its windows next
                                           change (epoch ms); one per input partition
    tf:k:{key_id}                  string  API key record          } the API's own keys,
    tf:ks                          set     ids of the API keys     } named by
    tf:r:{key_id}                  hash    its rate-limit bucket   } `api.key_layout`
    tf:mp                          hash    merge policy id -> policy (JSON), those made
                                           through the API (configured ones: settings)
    tf:xj                          zset    export job ids, scored by creation (epoch ms)
    tf:xj:{job}                    hash    an export job: spec, status, checkpoint (SCAN
                                           cursor, counts, file bytes), times, error
                                           (`traitflow.export_store`)
    tf:xj:{job}:lease              string  the token of the runner holding the job;
                                           expires unless its checkpoints renew it
    tf:xj:runnable                 set     export jobs NEW or PROCESSING (a runner may
                                           take one whose lease is gone)
    tf:l:{topic}/{partition}       zset    checkpoints of the input partition's log: the
                                           first record of committed batches, scored by
                                           offset ("offset:timestamp:crc"; `streams.logs`)
    tf:e:{topic}/{partition}       string  the partition's epoch: resets seen (absent: 0)
    tf:dlp                         stream  parked dead letters (the topic refused them):
                                           value, reason, origin, error (`streams.
                                           dead_letters`)
    tf:dlp:o                       hash    a parked letter's origin "topic/partition/offset"
                                           -> its stream entry id (parked once)
    tf:dlr                         hash    "{dead-letter topic}/{partition}" -> the letters
                                           replayed (JSON {"next": n, "done": [offsets]})
    tf:dlr:lock                    string  the running replay's token (one at a time)
    tf:sync                        string  written before each durability wait
                                           (`traitflow.durability`)
    tf:o:{topic}/{partition}       stream  messages committed writes must publish
                                           (topic, key, value), until the owner of the
                                           input partition has sent them (`traitflow.
                                           outbox`)
    tf:ca                          hash    computed attribute id -> the attribute made
                                           through the API (JSON; `traitflow.
                                           rule_catalog`)
    tf:ca:v                        string  the rules version: incremented by each
                                           change of `tf:ca` (absent: 0); commits are
                                           made only at the version they computed with
                                           (spread layout: each bucket's copy, raised
                                           by a process before it commits at a
                                           version: `traitflow.spread_rules`)
    tf:ca:g                        string  the generations of attribute states (JSON):
                                           served, being recomputed for source delete
                                           jobs (`attributes.recomputation`), the
                                           partitions' horizons, the jobs done
    tf:rs:{topic}/{partition}      hash    rules version -> the first offset of the
                                           partition a worker computed at it (noted
                                           before that commit): where a backfill of an
                                           attribute of that version stops; and
                                           "{version}:{entity}:{older}" -> offsets past
                                           it committed at the older version all the
                                           same: by a batch that switched midway, or by
                                           a worker that died unacknowledged (records
                                           redelivered to the one whose start note took
                                           effect: `streams.start_notes`), read as
                                           history too
    tf:bf                          hash    attribute id -> its backfill's progress (JSON)
    tf:bf:lock                     string  the token of the worker running backfills
    tf:a:user                      hash    audience name -> its kept members: the
                                           profiles in it that do not expire, adjusted
                                           by the commit of each write that enters or
                                           exits it (`traitflow.audience_counts`)
    tf:ax:user                     set     audiences that have expiring members
    tf:ax:user:{audience}          zset    its expiring (anonymous-only) members, scored
                                           by when their keys expire; the size adds
                                           those not yet due
    tf:pc:user                     hash    counted category ("profile", "source:{name}",
                                           "namespace:{identity type}") -> its kept
                                           profiles, as `tf:a:user` counts audience
                                           members (`traitflow.profile_counts`)
    tf:pcx:user                    set     categories that have expiring profiles
    tf:pcx:user:{category}         zset    its expiring (anonymous-only) profiles, scored
                                           by when their keys expire
    tf:d:user:{source}:{n}         set     messageIds of that source applied in time
                                           bucket n (a seventh of the dedupe window);
                                           expires a window after the bucket's end, so
                                           nothing scans for old ones
    tf:t:user:{digest}             string  tombstone of an erased identity (digest:
                                           SHA-256 of entity, type, value): offset
                                           watermarks only (`attributes.erasure`)
    tf:er:{request}                string  an erase request's status (JSON, no identity):
                                           pending (the API), applied (the commit)
    tf:sj                          zset    source delete job ids, scored by creation (ms)
    tf:sj:{job}                    hash    a source delete job: source, status, SCAN
                                           checkpoint, counts; `applied` is incremented
                                           by each commit of its commands
                                           (`traitflow.source_jobs`)
    tf:sj:{job}:lease              string  the token of the process running the job
    tf:sjt                         hash    spread layout, one per bucket: source delete
                                           job id -> its commands the bucket's commits
                                           applied (a job's `applied` is their sum)
    tf:it:{commit}                 string  spread layout: a commit's intent, written with
                                           its bucket's writes: the cross-slot steps
                                           that finish it (`traitflow.spread_claims`)
    tf:it                          zset    spread layout: the bucket's intents, scored by
                                           their claims' deadline (ms)

With `TRAITFLOW_REDIS_LAYOUT=spread` (docs/redis-cluster.md, option B) the keys of a
profile are under its bucket's hash tag instead of the prefix (`{tf.b17}:s:user:u-1`),
an identity's index key under its own bucket's, and every key a commit writes beside a
profile (outbox, expiry index, counters, rules version copy, intents, source delete
jobs' counts) has a copy per bucket: `traitflow.spread_layout` makes each bucket's
`KeyLayout`. The durability marker is written in the first bucket each master serves
(`traitflow.spread_durability`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str = "tf"

    def state(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:s:{entity}:{profile_id}"

    def view(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:v:{entity}:{profile_id}"

    def version(self, entity: str, profile_id: str) -> str:
        return f"{self.prefix}:n:{entity}:{profile_id}"

    def record(self, entity: str, collection: str, profile_id: str) -> str:
        return f"{self.record_prefix(entity, collection)}{profile_id}"

    def record_prefix(self, entity: str, collection: str) -> str:
        """Collections with a field mapping have no ':' in their name (settings)."""
        return f"{self.prefix}:c:{entity}:{collection}:"

    def view_prefix(self, entity: str) -> str:
        return f"{self.prefix}:v:{entity}:"

    def state_prefix(self, entity: str) -> str:
        return f"{self.prefix}:s:{entity}:"

    def all_keys(self) -> str:
        """A SCAN pattern for every key under this prefix."""
        return f"{self.prefix}:*"

    def index(self, entity: str, index: str, value: str) -> str:
        return f"{self.prefix}:i:{entity}:{index}:{value}"

    def expiries(self, entity: str, source: str) -> str:
        """`source` is the input partition, "topic/partition"."""
        return f"{self.prefix}:x:{entity}:{source}"

    def log_checkpoints(self, partition: str) -> str:
        """`partition` is the input partition, "topic/partition"."""
        return f"{self.prefix}:l:{partition}"

    def log_epoch(self, partition: str) -> str:
        return f"{self.prefix}:e:{partition}"

    def sync_marker(self) -> str:
        return f"{self.prefix}:sync"

    def messages(self, entity: str, source: str, bucket: int) -> str:
        """The messageIds of `source` applied in time bucket `bucket`; source names hold
        no ':' (settings)."""
        return f"{self.prefix}:d:{entity}:{source}:{bucket}"

    @property
    def parked_letters(self) -> str:
        return f"{self.prefix}:dlp"

    @property
    def parked_origins(self) -> str:
        return f"{self.prefix}:dlp:o"

    @property
    def replayed_letters(self) -> str:
        return f"{self.prefix}:dlr"

    @property
    def replay_lock(self) -> str:
        return f"{self.prefix}:dlr:lock"

    def merge_policies(self) -> str:
        return f"{self.prefix}:mp"

    def computed_attributes(self) -> str:
        return f"{self.prefix}:ca"

    def rules_version(self) -> str:
        return f"{self.prefix}:ca:v"

    def generations(self) -> str:
        return f"{self.prefix}:ca:g"

    def backfill_progress(self) -> str:
        return f"{self.prefix}:bf"

    def backfill_lock(self) -> str:
        return f"{self.prefix}:bf:lock"

    def rules_starts(self, partition: str) -> str:
        """`partition` is the input partition, "topic/partition"."""
        return f"{self.prefix}:rs:{partition}"

    def audience_sizes(self, entity: str) -> str:
        return f"{self.prefix}:a:{entity}"

    def expiring_audiences(self, entity: str) -> str:
        return f"{self.prefix}:ax:{entity}"

    def expiring_members(self, entity: str, audience: str) -> str:
        """Audience names are identifiers: no ':' (`attributes.audiences`)."""
        return f"{self.prefix}:ax:{entity}:{audience}"

    def profile_counts(self, entity: str) -> str:
        return f"{self.prefix}:pc:{entity}"

    def expiring_categories(self, entity: str) -> str:
        return f"{self.prefix}:pcx:{entity}"

    def expiring_profiles(self, entity: str, category: str) -> str:
        """Categories are "kind:name" (`traitflow.profile_counts`): never empty."""
        return f"{self.prefix}:pcx:{entity}:{category}"

    def tombstone(self, entity: str, digest: str) -> str:
        return f"{self.prefix}:t:{entity}:{digest}"

    def erasure(self, request: str) -> str:
        return f"{self.prefix}:er:{request}"

    def source_jobs(self) -> str:
        return f"{self.prefix}:sj"

    def source_job(self, job_id: str) -> str:
        return f"{self.prefix}:sj:{job_id}"

    def source_job_lease(self, job_id: str) -> str:
        return f"{self.prefix}:sj:{job_id}:lease"

    def source_job_tallies(self) -> str:
        return f"{self.prefix}:sjt"

    def outbox(self, source: str) -> str:
        """`source` is the input partition, "topic/partition" (`traitflow.outbox`)."""
        return f"{self.prefix}:o:{source}"

    def intent(self, commit: str) -> str:
        """Commit ids are hex (`traitflow.spread_claims`)."""
        return f"{self.prefix}:it:{commit}"

    def intents(self) -> str:
        return f"{self.prefix}:it"

    def export_jobs(self) -> str:
        return f"{self.prefix}:xj"

    def export_job(self, job_id: str) -> str:
        """Job ids are hex (`traitflow.export_store`): never `runnable`."""
        return f"{self.prefix}:xj:{job_id}"

    def export_lease(self, job_id: str) -> str:
        return f"{self.prefix}:xj:{job_id}:lease"

    def export_runnable(self) -> str:
        return f"{self.prefix}:xj:runnable"
