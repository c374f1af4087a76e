"""What the hard-linked install relies on, checked against the real `go build`: it never writes into an existing
output file, so the installed binary (the same inode as the last output) stays as it was, even while it runs."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support.example import GO_ENV
from omniworker.gobuild import install

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")

MAIN = """package main

import (
	"os"
	"time"
)

func main() {
	os.Stdout.WriteString("%s\\n")
	if len(os.Args) > 1 {
		time.Sleep(30 * time.Second)
	}
}
"""


def go_build(src, word: str) -> None:
    (src / "main.go").write_text(MAIN % word)
    subprocess.run(["go", "build", "-ldflags=-s -w", "-o", "build/bin/plugin", "."], cwd=src, check=True,
                   env=dict(os.environ, **GO_ENV), capture_output=True, timeout=120)


def test_go_build_replaces_its_output_so_a_linked_install_is_never_written(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "home" / "bin"
    src.mkdir()
    output = src / "build" / "bin" / "plugin"
    go_build(src, "one")
    installed = install(str(output), str(dest), link=True)
    assert os.path.samefile(output, installed)
    running = subprocess.Popen([installed, "wait"], stdout=subprocess.PIPE, text=True)
    try:
        assert running.stdout.readline() == "one\n"
        go_build(src, "two")                              # into the same -o while the installed one runs
        assert not os.path.samefile(output, installed)
        assert subprocess.run([installed], capture_output=True, text=True).stdout == "one\n"
        assert subprocess.run([str(output)], capture_output=True, text=True).stdout == "two\n"
        assert running.poll() is None
        install(str(output), str(dest), link=True)
        assert subprocess.run([installed], capture_output=True, text=True).stdout == "two\n"
        assert os.path.samefile(f"/proc/{running.pid}/exe", str(dest / "plugin.prev"))
    finally:
        running.kill()
        running.wait()
