"""Children that die with their parent, without `preexec_fn`.

`preexec_fn` runs Python in the forked child, which is unsafe once other threads exist (gRPC
starts several: plugins forked that way died with SIGSEGV). Instead the child is started
through a tiny exec shim that sets PR_SET_PDEATHSIG and then execs the real program; the
setting survives execve. If the parent already died before the shim ran, the shim exits.

The shim can also move itself into cgroups before the exec (`join`: the `cgroup.procs` files
to write its pid into), so a plugin never runs a single instruction outside its limits. If it
cannot join, it exits with JOIN_FAILED instead of running unconfined.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PARENT_GONE = 70
JOIN_FAILED = 71

_SHIM = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL('libc.so.6',use_errno=True).prctl(1,signal.SIGKILL,0,0,0)\n"
    f"os.getppid()==int(sys.argv[1]) or os._exit({PARENT_GONE})\n"
    "n=int(sys.argv[2])\n"
    "for p in sys.argv[3:3+n]:\n"
    " try:\n"
    "  with open(p,'w') as f: f.write(str(os.getpid()))\n"
    " except OSError as e:\n"
    "  sys.stderr.write('hidsd: cannot join cgroup %s: %s\\n'%(p,e)); sys.stderr.flush()\n"
    f"  os._exit({JOIN_FAILED})\n"
    "a=sys.argv[3+n:]\n"
    "os.execvp(a[0],a)\n"
)


def with_pdeathsig(argv: Sequence[str], parent_pid: int, join: Sequence[str] = ()) -> list[str]:
    """The command line that runs `argv` with SIGKILL on the death of `parent_pid`, inside
    the cgroups whose `cgroup.procs` files are listed in `join`."""
    return [sys.executable, "-S", "-c", _SHIM, str(parent_pid), str(len(join)), *join, *argv]
