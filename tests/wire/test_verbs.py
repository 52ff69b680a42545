"""hidsd.wire.verbs: one name per verb in each table, each decoding to its own reply type."""

from __future__ import annotations

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire import verbs
from hidsd.wire.replies import Expected
from hidsd.wire.rpc import Verb


def test_each_table_names_a_verb_once() -> None:
    table = {n: v for n, v in vars(verbs).items() if isinstance(v, Verb)}
    peer = [v.name for n, v in table.items() if n.startswith("PEER_")]
    ctl = [v.name for n, v in table.items() if not n.startswith("PEER_")]
    assert len(ctl) == len(set(ctl)) == 12
    assert sorted(peer) == ["query", "stats"]


def test_a_verb_refuses_a_reply_of_another_verb() -> None:
    wire = Expected((), ()).to_wire()
    assert verbs.EXPECTED.check(wire) == Expected((), ())
    with pytest.raises(ProtocolError, match=r"agents\.list reply: missing field 'agents'"):
        verbs.AGENTS_LIST.check(wire)
