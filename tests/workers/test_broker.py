"""The embedded broker: two processes declaring the same queue at once must both get it."""
from __future__ import annotations

from kombu import Connection

from workers.broker import broker_url, ensure_embedded_broker, transport_options
from workers.config import BrokerConfig


def test_a_queue_created_by_another_process_in_between_is_used_not_fatal(tmp_path):
    b = BrokerConfig()
    ensure_embedded_broker(b, tmp_path)
    with Connection(broker_url(b, tmp_path), transport_options=transport_options(b)) as c1, \
            Connection(broker_url(b, tmp_path), transport_options=transport_options(b)) as c2:
        first, second = c1.default_channel, c2.default_channel
        real_query = second.session.query
        seen = {"n": 0}

        class Missing:  # what `second` saw before `first` committed the row
            def filter(self, *a, **k):
                return self

            def first(self):
                return None

        def stale_query(*a, **k):
            seen["n"] += 1
            return Missing() if seen["n"] <= 2 else real_query(*a, **k)

        created = first._get_or_create("race.sim")
        second.session.query = stale_query
        got = second._get_or_create("race.sim")  # inserts, hits the unique name, re-reads
        assert seen["n"] == 3 and got.id == created.id and got.name == "race.sim"
