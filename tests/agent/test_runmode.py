from __future__ import annotations

from dataclasses import replace

from hidsd.agent.control import ControlPolicy
from hidsd.agent.runmode import RunModeHolder
from hidsd.wire.commands import MAX_COMMAND_BYTES, RunMode
from hidsd.wire.signing import TrustStore


def make_policy() -> ControlPolicy:
    return ControlPolicy(host="h", groups=(), trust=TrustStore.from_b64([]),
                         max_command_bytes=MAX_COMMAND_BYTES)  # fmt: skip


def test_followers_hear_the_mode_now_and_on_every_change() -> None:
    policy = make_policy()
    holder = RunModeHolder(policy)
    heard: list[bool] = []
    holder.follow(heard.append)
    assert heard == [True] and holder.mode is RunMode.RUNNING
    policy.state = replace(policy.state, mode=RunMode.STOPPED)
    holder.changed()
    assert heard == [True, False] and holder.mode is RunMode.STOPPED and not holder.running


def test_exiting_overrides_the_applied_mode_without_touching_it() -> None:
    policy = make_policy()
    holder = RunModeHolder(policy)
    holder.exit()
    assert holder.mode is RunMode.EXITING and not holder.running
    assert policy.state.mode is RunMode.RUNNING  # the persisted state is not the exit
