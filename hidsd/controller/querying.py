"""`query`: which hosts run an affected version, split over the live controllers by host
(rendezvous hashing over the member list), each evaluating its share from its own inventory
index, merged by the one that was asked; a share a member does not answer is redone there."""

from __future__ import annotations

import asyncio
import time

from hidsd.controller.cluster import Cluster, owner
from hidsd.controller.endpoints import Params
from hidsd.controller.inventory import InventoryIndex
from hidsd.controller.presence import Presence
from hidsd.controller.queries import merge_query
from hidsd.wire.fleetquery import (
    PackageMatch,
    QueryRequest,
    QueryResult,
    QueryShare,
    QueryShareRequest,
    range_to_wire,
)
from hidsd.wire.verbs import PEER_QUERY

#: online hosts whose inventory is older are counted as not answering
DEFAULT_MAX_AGE_S = 2 * 3600.0 + 600.0


class FleetQuery:
    """The coordinator's `query` and every member's share of it."""

    def __init__(
        self, name: str, index: InventoryIndex, presence: Presence, cluster: Cluster,
        share_delay_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.name = name
        self.index = index
        self.presence = presence
        self.cluster = cluster
        #: fault injection for tests: hold each share this long (0 = off)
        self.share_delay_s = share_delay_s

    async def share(self, params: Params) -> QueryShare:
        """Evaluate the hosts of one share (those `shard` owns among `members`)."""
        req = QueryShareRequest.from_params(params)
        if self.share_delay_s:  # fault injection for tests: a share in flight
            await asyncio.sleep(self.share_delay_s)
        mine = [h for h in self.index.hosts() if owner(h, req.members) == req.shard]
        uncomparable: dict[str, list[tuple[str, str]]] = {}
        matches, counters = self.index.evaluate(list(req.ranges), mine, uncomparable)
        return QueryShare(
            uncomparable={h: tuple(v) for h, v in uncomparable.items()},
            controller=self.name,
            evaluated={h: self.index.inventory_time(h) for h in mine},
            matches={h: tuple(PackageMatch(m.ecosystem, m.package, m.version, m.range_spec,
                                           m.source) for m in ms)
                     for h, ms in matches.items()},
            counters=counters,
        )  # fmt: skip

    async def query(self, params: Params) -> QueryResult:
        """Every known host accounted for: matched, clean, offline from its last inventory,
        or no answer and why. A bad range is refused here, before any peer sees it."""
        req = QueryRequest.from_params(params)
        max_age = DEFAULT_MAX_AGE_S if req.max_age_s is None else req.max_age_s
        started = time.monotonic()
        results, how = await self.cluster.scatter(
            PEER_QUERY.name, {"ranges": [range_to_wire(r) for r in req.ranges]}, self.share,
            decode=PEER_QUERY.check,
        )  # fmt: skip
        liveness = {h: r.liveness for h, r in self.presence.agents.items()}
        return merge_query(results, how, liveness, max_age, started, time.time())
