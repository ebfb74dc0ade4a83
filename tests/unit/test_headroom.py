"""When a request's read goes with its rate-limit charge on the spread layout
(`api.headroom`): charge first for a key not seen yet or near its limit, together while
it clearly has tokens; with one process charging a key, a read never goes with a
charge that is refused (checked against `api.ratelimit.take`, the bucket Redis keeps).
On the cluster, counted on the nodes: tests/integration/test_redis_cluster_spread_reads.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from api import ratelimit
from api.headroom import Headroom, needed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_not_answered_yet_is_charged_first() -> None:
    headroom = Headroom(clock=Clock())
    first, second = headroom.send("k", 10.0, 100), headroom.send("k", 10.0, 100)
    assert not first.together
    assert not second.together  # sent before any answer
    headroom.answered(first, 99.0)
    assert headroom.send("k", 10.0, 100).together
    assert not headroom.send("other", 10.0, 100).together


def test_near_the_limit_the_charge_goes_first_until_the_bucket_refills() -> None:
    clock = Clock()
    headroom = Headroom(clock=clock)
    rate, burst = 2.0, 20
    assert needed(burst) == 3.0  # the request's token and a tenth of the burst
    headroom.answered(headroom.send("k", rate, burst), 3.0)
    sent = headroom.send("k", rate, burst)
    assert sent.together  # three left
    assert not headroom.send("k", rate, burst).together  # three, one in flight
    headroom.answered(sent, 0.4)  # another process took most of them
    assert not headroom.send("k", rate, burst).together
    clock.now += 2.0  # 0.4 + 4 tokens, two charges in flight
    assert not headroom.send("k", rate, burst).together
    clock.now += 1.0  # 6.4, three in flight
    assert headroom.send("k", rate, burst).together


def test_a_refused_answer_sends_the_next_charges_first() -> None:
    clock = Clock()
    headroom = Headroom(clock=clock)
    headroom.answered(headroom.send("k", 1.0, 100), 80.0)
    sent = headroom.send("k", 1.0, 100)
    assert sent.together
    headroom.answered(sent, 0.2)  # refused: others took the tokens
    assert not headroom.send("k", 1.0, 100).together


def test_an_answer_older_than_the_record_is_not_taken() -> None:
    clock = Clock()
    headroom = Headroom(clock=clock)
    old = headroom.send("k", 1.0, 100)
    clock.now += 0.1
    new = headroom.send("k", 1.0, 100)
    headroom.answered(new, 0.0)
    headroom.answered(old, 90.0)  # came last, said more: stale
    assert not headroom.send("k", 1.0, 100).together


def test_a_failed_charge_only_leaves_the_in_flight_count() -> None:
    clock = Clock()
    headroom = Headroom(clock=clock)
    headroom.answered(headroom.send("k", 1.0, 10), 5.0)
    failed = headroom.send("k", 1.0, 10)
    headroom.answered(failed, None)
    assert headroom.send("k", 1.0, 10).together  # five left, nothing in flight


def test_keys_are_remembered_up_to_the_size() -> None:
    headroom = Headroom(size=2, clock=Clock())
    for key in "abc":
        headroom.answered(headroom.send(key, 1.0, 100), 90.0)
    assert len(headroom) == 2
    assert not headroom.send("a", 1.0, 100).together  # forgotten: charged first again
    assert headroom.send("c", 1.0, 100).together


#: rounds of requests: (seconds since the last round, requests sent at once, seconds
#: until Redis runs them, seconds until their answers come)
ROUNDS = st.lists(
    st.tuples(
        st.floats(0, 3),
        st.integers(1, 12),
        st.floats(0, 0.3),
        st.floats(0, 0.3),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ROUNDS, st.floats(0.5, 50), st.integers(1, 30))
def test_with_one_process_a_read_never_goes_with_a_refused_charge(
    rounds: list[tuple[float, int, float, float]], rate: float, burst: int
) -> None:
    clock = Clock()
    headroom = Headroom(clock=clock)
    bucket: ratelimit.Bucket | None = None
    together = refused = 0
    for pause, count, to_redis, to_answer in rounds:
        clock.now += pause
        sent = [headroom.send("k", rate, burst) for _ in range(count)]
        clock.now += to_redis
        waits = []
        for _ in sent:  # Redis runs them in order, on its own clock (the same here)
            bucket, wait = ratelimit.take(bucket, clock.now, rate, burst)
            waits.append((wait, bucket.tokens))
        clock.now += to_answer
        for one, (wait, tokens) in zip(sent, waits, strict=True):
            headroom.answered(one, tokens)
            together += one.together
            refused += wait > 0
            assert not (one.together and wait > 0)
    assert together + refused <= sum(count for _, count, _, _ in rounds)
