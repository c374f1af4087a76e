"""supervisord as the workers' zygote: worker programs are forked from a supervisord that has imported them.

A worker is a Python process with asyncio, pyzmq, grpc, watchdog and our modules imported: ~20 MB of its own memory
(USS) and ~0.2 CPU-second of imports when each one execs a fresh interpreter. supervisord loads this module as an
rpcinterface (supervisor.d/omni.conf, `[rpcinterface:omniworker]`) before it starts any program. It then imports
everything a worker runs, freezes those objects for the collector (`gc.freeze()`), and wraps supervisord's `execve`:
the child supervisord forked for an `omniworker-<id>` program (its pipes, directory, umask and environment already set
up by supervisord, exactly as for an exec) runs `omniworker.worker.main` in place instead of exec'ing a new
interpreter. So the imported code and objects are shared, copy-on-write, by supervisord and every worker; each worker
owns only what it changes. The worker is still supervisord's own child, with the pid supervisord knows and the
command line the exec would have shown: supervisorctl, restarts, signals and logs are unchanged.

Any other program, and a worker whose command names another interpreter than supervisord's (`sys.prefix`), is
exec'd as before. `OMNI_WORKER_EXEC=1` in supervisord's environment turns preloading off. Code changed on disk reaches
forked workers only after supervisord restarts (exec'd ones load it at their start).
"""
from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any, Callable

WORKER_MODULE = "omniworker.worker"
# Everything a worker may load, whatever its plugin runs: the worker, the Go half (build, watcher, gRPC host), the Vite
# half, external mode, the debugger, the plugin.yaml reader, what asyncio imports on first use (the thread pool behind
# `to_thread`), and what names the forked worker (setproctitle). A module a worker imports itself is its own memory.
PRELOAD = ("omniworker.worker", "omniworker.gopath", "omniworker.vite", "omniworker.external",
           "omniworker.debugsession", "omnibroker.pluginmeta", "yaml", "concurrent.futures.thread", "setproctitle")
# The signals supervisord catches (supervisor/options.py setsignals): an exec would have reset them to the default.
SUPERVISORD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2)
M_ARENA_MAX = -8        # glibc's mallopt parameter; MALLOC_ARENA_MAX is read only when a process starts


def is_worker_command(filename: str, argv: list[str]) -> bool:
    """Whether supervisord is about to exec `python -m omniworker.worker ...` with this very interpreter's venv."""
    return (len(argv) >= 3 and argv[1:3] == ["-m", WORKER_MODULE]
            and os.path.dirname(os.path.dirname(os.path.abspath(filename))) == os.path.abspath(sys.prefix))


def become_worker(argv: list[str], env: dict[str, str]) -> None:
    """In the child supervisord forked: turn it into the worker `argv` names, as if exec'd with `env`. Never returns."""
    code = 127
    try:
        for sig in SUPERVISORD_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        gc.freeze()                     # what supervisord made since its freeze is shared too: the collector keeps off
        # setproctitle may use only supervisord's command line's memory, not its environment's: the worker's
        # /proc/PID/environ stays readable (what supervisord was started with; the tests find a service's processes by
        # it). Then the worker's own environment replaces supervisord's.
        os.environ["SPT_NOENV"] = "1"
        _set_title(worker_title(argv))
        os.environ.clear()
        os.environ.update(env)
        arena_max = env.get("MALLOC_ARENA_MAX", "")
        if arena_max.isdigit():
            import ctypes
            ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(arena_max))
        sys.argv = [WORKER_MODULE, *argv[3:]]
        # supervisord's own buffered streams must not be written out by the worker
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        from omniworker.worker import main
        code = main(argv[3:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:               # noqa: BLE001 - the child must never return into supervisord's loop
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def worker_title(argv: list[str]) -> str:
    """The command line the worker shows (`ps`, the broker's workers.is_worker_of): the exec's, with the interpreter's
    name instead of its path, as it must fit where supervisord's own command line was."""
    return " ".join([os.path.basename(argv[0]), *argv[1:]])


def _set_title(title: str) -> None:
    import setproctitle
    setproctitle.setproctitle(title)


class PreloadInterface:
    """The rpcinterface supervisord makes at start-up (namespace `omniworker`): whether workers are forked, and why
    not when they are exec'd."""

    def __init__(self, modules: list[str], why_not: str = ""):
        self.modules = modules
        self.why_not = why_not

    def getPreload(self) -> dict:  # noqa: N802 - supervisord's XML-RPC naming
        """{"forked": bool, "modules": [...], "why_not": str}"""
        return {"forked": not self.why_not, "modules": self.modules, "why_not": self.why_not}


def rpcinterface(supervisord: Any, **config: str) -> PreloadInterface:
    """supervisord's rpcinterface factory: import the workers' modules here and fork workers from it. A failure
    leaves supervisord as it was (workers exec'd), and says why in its log."""
    if os.environ.get("OMNI_WORKER_EXEC") == "1":
        return PreloadInterface([], "OMNI_WORKER_EXEC=1")
    options = supervisord.options
    if getattr(options.execve, "omni_preload", False):     # supervisord re-made its interfaces (reload)
        return PreloadInterface(list(PRELOAD))
    import importlib
    # The collector stays off while importing and the imports' objects are then frozen as they are (gc's docs): a
    # collection here would free garbage amid them, and every object a worker makes later in such a hole would copy a
    # shared page.
    gc.disable()
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except Exception as e:      # noqa: BLE001 - supervisord must start whatever happens here
        why = f"preloading the workers' modules failed ({type(e).__name__}: {e}): workers are exec'd"
        options.logger.warn(f"omniworker.preload: {why}")
        return PreloadInterface([], why)
    finally:
        gc.freeze()
        gc.enable()
    options.execve = _execve(options.execve)
    return PreloadInterface(list(PRELOAD))


def _execve(real: Callable[[str, list[str], dict], Any]) -> Callable[[str, list[str], dict], Any]:
    def execve(filename: str, argv: list[str], env: dict) -> Any:
        if is_worker_command(filename, argv):
            become_worker(list(argv), dict(env))
        return real(filename, argv, env)
    execve.omni_preload = True      # type: ignore[attr-defined]
    return execve
