"""Build input stamps: start a managed plugin without a no-op `go build` when nothing that decides its binary changed.

`inputs_digest(argv, cwd, output, env, sources)` is a sha256 over what we can see cheaply (no process spawned):
- the build argv, the build cwd and the output path;
- the build env entries that affect Go builds: names starting with `GO` or `CGO_` (except `GOTMPDIR`, a scratch
  dir, and `GOGC`, `GOMEMLIMIT`, `GOMAXPROCS`, which tune the toolchain's own processes, not what they produce), and `CC`, `CXX`, `AR`, `FC`, `PKG_CONFIG`. `PATH` counts only through the tools it resolves to: argv[0] (and
  `go` too when argv[0] is another tool, e.g. make or a script), each as the real path it resolves to (symlinks
  followed) and that file's (size, mtime_ns, inode), so a toolchain upgrade or an edited build script changes the
  digest while another PATH leading to the same go does not;
- the sources: `GoWatcher.snapshot()`, i.e. every file the watcher considers relevant (same `[go] watch` globs, same
  ignores, same pruned dirs), as (relative path, size, mtime_ns, ctime_ns, inode), sorted. ctime and inode catch a
  file put back with an old mtime and the same size (`tar x`, `cp -p`, `rsync -a`), which mtime alone would miss.

NOT covered: anything outside the watched globs — packages from GOPATH, vendor/ or the module cache outside the
plugin dir, files read through `//go:embed` or cgo unless `[go] watch` names them, and a GOROOT whose standard library
changed while the go binary did not. `omnictl rebuild <id>` forces a build.

The stamp `<binary>.stamp` (e.g. `<home>/bin/plugin.stamp`, JSON) holds that digest and the identity (size,
mtime_ns, inode) the installed binary had right after install. gobuild's `install()` and `rollback()` remove it
before touching the binary; GoPath writes it after a successful build + install, with the inputs taken BEFORE the
build command ran (so an edit made during the build is never stamped as built). A missing, unreadable or garbled
stamp means "build".
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Iterable, Mapping, Sequence

from omnibroker.files import write_atomic

STAMP_VERSION = 1
STAMP_SUFFIX = ".stamp"
ENV_PREFIXES = ("GO", "CGO_")
ENV_NAMES = frozenset({"CC", "CXX", "AR", "FC", "PKG_CONFIG"})
ENV_SKIPPED = frozenset({"GOTMPDIR", "GOGC", "GOMEMLIMIT", "GOMAXPROCS"})


# ----------------------------------------------------------------------------------------------------------------
# The inputs digest (pure but for stat calls)

def build_env(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The env entries that decide a Go build's output, sorted."""
    return sorted((k, v) for k, v in env.items()
                  if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and k not in ENV_SKIPPED)


def resolve_tool(name: str, cwd: str, env: Mapping[str, str]) -> str | None:
    """Where exec would find `name`: relative to cwd when it has a slash, else on the env's PATH."""
    if os.sep in name or (os.altsep and os.altsep in name):
        path = os.path.abspath(os.path.join(cwd, name))
        return path if os.path.isfile(path) else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def tool_identity(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[list[Any]]:
    names = [argv[0]] if argv else []
    if not argv or os.path.basename(argv[0]) != "go":
        names.append("go")
    out: list[list[Any]] = []
    for name in names:
        path = resolve_tool(name, cwd, env)
        if path is None:
            out.append([name, None])
            continue
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            out.append([name, real, None])
            continue
        out.append([name, real, st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def inputs_digest(argv: Sequence[str], cwd: str, output: str, env: Mapping[str, str],
                  sources: Iterable[Sequence[Any]]) -> str:
    """sha256 (hex) of the build inputs (see the module doc). Equal digests: the same build would be made."""
    doc = {"v": STAMP_VERSION, "argv": [str(a) for a in argv], "cwd": cwd, "output": output,
           "env": build_env(env), "tools": tool_identity(argv, cwd, env), "sources": [list(s) for s in sources]}
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The stamp file

def stamp_path(binary: str) -> str:
    return binary + STAMP_SUFFIX


def binary_identity(binary: str) -> dict[str, int]:
    st = os.stat(binary)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def write_stamp(binary: str, inputs: str, **extra: Any) -> dict[str, Any]:
    """Stamp the binary installed at `binary` as built from `inputs` (atomically: tmp file + rename). Raises OSError."""
    doc = {**extra, "version": STAMP_VERSION, "inputs": inputs, "binary": binary_identity(binary)}
    write_atomic(stamp_path(binary), json.dumps(doc), fsync=False)
    return doc


def read_stamp(binary: str) -> dict[str, Any] | None:
    """The stamp of `binary`, or None when it is missing, unreadable or not one of ours."""
    try:
        with open(stamp_path(binary), "rb") as f:
            doc = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != STAMP_VERSION or not isinstance(doc.get("inputs"), str):
        return None
    ident = doc.get("binary")
    if not isinstance(ident, dict) or not all(type(ident.get(k)) is int for k in ("size", "mtime_ns", "ino")):
        return None
    return doc


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stamp(binary: str) -> None:
    """Forget the stamp of `binary` (never raises)."""
    remove_file(stamp_path(binary))


def check(binary: str, inputs: str) -> tuple[dict[str, Any] | None, str]:
    """(stamp, "") when `binary` is the one built from `inputs`; else (None, why a build is needed)."""
    stamp = read_stamp(binary)
    if stamp is None:
        why = "no build stamp" if not os.path.lexists(stamp_path(binary)) else "the build stamp is unreadable"
        return None, why
    try:
        ident = binary_identity(binary)
    except OSError:
        return None, "no installed binary"
    if ident != {k: stamp["binary"][k] for k in ("size", "mtime_ns", "ino")}:
        return None, "the installed binary is not the stamped one"
    if stamp["inputs"] != inputs:
        return None, "the sources, the build command, its env or the go tool changed since the installed build"
    return stamp, ""


__all__ = ["inputs_digest", "build_env", "tool_identity", "write_stamp", "read_stamp", "remove_stamp", "check",
           "stamp_path", "binary_identity"]
