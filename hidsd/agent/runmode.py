"""The agent's run mode, held in one place.

The applied control state (`ControlPolicy.state`, persisted by the state file) says running or
stopped; shutdown adds exiting. Everything that acts on the mode follows this holder: it is
told on every change and never keeps a copy of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from hidsd.agent.control import ControlPolicy
from hidsd.wire.commands import RunMode


class RunModeHolder:
    def __init__(self, policy: ControlPolicy) -> None:
        self._policy = policy
        self._exiting = False
        self._followers: list[Callable[[bool], None]] = []

    @property
    def mode(self) -> RunMode:
        return RunMode.EXITING if self._exiting else self._policy.state.mode

    @property
    def running(self) -> bool:
        """Whether HIDS work (plugins) may run: the kill switch and shutdown both say no."""
        return self.mode is RunMode.RUNNING

    def follow(self, follower: Callable[[bool], None]) -> None:
        """`follower(running)` now and after every change."""
        self._followers.append(follower)
        follower(self.running)

    def changed(self) -> None:
        """The applied control state changed (a command or a store decision)."""
        for follower in self._followers:
            follower(self.running)

    def exit(self) -> None:
        self._exiting = True
