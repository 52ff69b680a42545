"""Children that die with their parent, without `preexec_fn`.

`preexec_fn` runs Python in the forked child, which is unsafe once other threads exist (gRPC
starts several: plugins forked that way died with SIGSEGV). Instead the child is started
through a tiny exec shim that sets PR_SET_PDEATHSIG and then execs the real program; the
setting survives execve. If the parent already died before the shim ran, the shim exits.
"""

from __future__ import annotations

import sys

_SHIM = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL('libc.so.6',use_errno=True).prctl(1,signal.SIGKILL,0,0,0)\n"
    "os.getppid()==int(sys.argv[1]) or os._exit(70)\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


def with_pdeathsig(argv: list[str] | tuple[str, ...], parent_pid: int) -> list[str]:
    """The command line that runs `argv` with SIGKILL on the death of `parent_pid`."""
    return [sys.executable, "-S", "-c", _SHIM, str(parent_pid), *argv]
