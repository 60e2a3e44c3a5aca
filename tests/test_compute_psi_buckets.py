"""Bucketed PSI (fedrec.psi.buckets) over the in-memory transport: the same intersection as one session,
padded bucket sizes, and a refused peer."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.psi.buckets import BucketHello, BucketPlan, bucket_of, padded_size, run_bucketed_psi
from fedrec.psi.ids import encode_ids
from fedrec.psi.protocol import run_psi
from fedrec.transport import MemoryNetwork, run_parties


def _pair(g_ids: list[str], h_ids: list[str], bucket: int, pad: bool = True) -> tuple[object, object]:
    net = MemoryNetwork()
    guest, host = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    out = run_parties({
        "guest": lambda: run_bucketed_psi(guest, "host", encode_ids(g_ids), role="guest", bucket_size=bucket,
                                          chunk_size=256, workers=1, timeout=20, pad=pad),
        "host": lambda: run_bucketed_psi(host, "guest", encode_ids(h_ids), role="host", bucket_size=bucket,
                                         chunk_size=256, workers=1, timeout=20, pad=pad),
    }, timeout=60)
    return out["guest"], out["host"]


def test_bucketed_psi_equals_one_session() -> None:
    rng = np.random.default_rng(0)
    g = [f"id{j}" for j in rng.permutation(3000)[:1500]] + ["id0", "only-guest"]  # a duplicate row
    h = [f"id{j}" for j in rng.permutation(3000)[:1200]]
    gr, hr = _pair(g, h, bucket=400)
    assert gr.n_buckets == hr.n_buckets == 4  # ceil(1501 / 400)
    truth = set(g) & set(h)
    assert {x.decode() for x in gr.ids} == truth and gr.ids == hr.ids  # the same aligned order
    assert [g[r] for r in gr.rows] == [x.decode() for x in gr.ids]
    assert [h[r] for r in hr.rows] == [x.decode() for x in hr.ids]
    assert gr.bucket_size == padded_size(1501, 4) and gr.peer_size == 1200
    # one unbucketed session finds the same set
    net = MemoryNetwork()
    a, b = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    one = run_parties({
        "guest": lambda: run_psi(a, "host", encode_ids(g), role="guest", workers=1, timeout=20),
        "host": lambda: run_psi(b, "guest", encode_ids(h), role="host", workers=1, timeout=20)}, timeout=60)
    assert set(one["guest"].ids) == set(gr.ids)


def test_bucket_plan_and_padding() -> None:
    g = BucketHello(role="guest", set_size=10_000, bucket_target=1000, salt=b"g" * 32)
    h = BucketHello(role="host", set_size=25_000, bucket_target=5000, salt=b"h" * 32)
    plan = BucketPlan.agree(g, h)
    assert plan.n_buckets == 25  # the larger set over the smaller target
    ids = encode_ids([f"u{j}" for j in range(25_000)])
    counts = np.bincount(bucket_of(ids, plan.salt, plan.n_buckets), minlength=25)
    assert counts.max() <= padded_size(25_000, 25)  # padding hides the histogram
    assert padded_size(5, 1) == 5
    with pytest.raises(ValueError, match="salt must be 32 bytes"):
        BucketHello(role="guest", set_size=1, bucket_target=1, salt=b"x")


def test_two_guests_are_refused() -> None:
    net = MemoryNetwork()
    a, b = net.channel("guest", ["host"]), net.channel("host", ["guest"])
    out = run_parties({
        "guest": lambda: run_bucketed_psi(a, "host", encode_ids(["a"]), role="guest", timeout=5, workers=1),
        "host": lambda: run_bucketed_psi(b, "guest", encode_ids(["a"]), role="guest", timeout=5, workers=1),
    }, timeout=30, return_exceptions=True)
    assert all("the peer also plays 'guest'" in str(v) for v in out.values())
