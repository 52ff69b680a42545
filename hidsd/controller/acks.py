"""The controllers' ack ledger: acks per command, bounded; what falls off the end is counted."""

from __future__ import annotations

from collections import OrderedDict

from hidsd.wire.commands import Ack

LEDGER_SIZE = 1024


class AckLedger:
    """Acks per command, bounded; what falls off the end is counted."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self.commands: OrderedDict[str, dict[str, Ack]] = OrderedDict()
        self.evicted = 0

    def record(self, ack: Ack) -> None:
        acks = self.commands.get(ack.cmd_id)
        if acks is None:
            acks = self.commands[ack.cmd_id] = {}
            while len(self.commands) > self.size:
                self.commands.popitem(last=False)
                self.evicted += 1
        acks[ack.host] = ack

    def get(self, cmd_id: str) -> dict[str, Ack] | None:
        return self.commands.get(cmd_id)
