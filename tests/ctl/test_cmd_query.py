"""hidsd.ctl.cmd_query.query: the request hidsctl sends, the typed answer, over a given bus."""

from __future__ import annotations

import asyncio

from hidsd.ctl.cmd_query import query
from hidsd.ctl.common import CtlSettings
from hidsd.wire.fleetquery import QueryCounts, QueryRequest, QueryResult
from hidsd.wire.ranges import parse_vers
from hidsd.wire.rpc import decode_request, encode_reply


class FakeBus:
    """Answers one request with a complete, empty query result; keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, float]] = []

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        self.sent.append((subject, data, timeout))
        counts = QueryCounts(hosts=2, answered=2, matched=0, clean=2, offline_answered=0,
                             no_answer=0)  # fmt: skip
        res = QueryResult((), (), (), counts, (), {}, True, 1.5)
        return encode_reply(res.to_wire())


def test_query_over_a_given_bus() -> None:
    bus = FakeBus()
    rng = parse_vers("vers:deb/<1.1.1n-0+deb11u5", "openssl")
    s = CtlSettings(subject_prefix="pfx")
    res = asyncio.run(query(s, [rng], 7800.0, 3.0, bus=bus))
    assert res.complete and res.counts.answered == 2 and res.elapsed_ms == 1.5
    [(subject, data, timeout)] = bus.sent
    assert subject == "pfx.ctl.query" and timeout == 3.0
    sent = QueryRequest.from_params(decode_request(data))
    assert sent.max_age_s == 7800.0 and sent.ranges == (rng,)
