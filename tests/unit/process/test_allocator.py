"""`python -m pipeline` re-executes itself on tcmalloc where the system has it, once, with its own arguments; with
CHAT_RETRAIN_ALLOCATOR=system, or without the library, it runs on the C library's malloc."""

import os
import subprocess
import sys

import pytest

from pipeline.process import allocator

# Prints what the (possibly re-executed) process allocates with, its pid, and its arguments.
PROBE = "import os, sys; from pipeline.process import allocator; allocator.use_tcmalloc(); " \
        "print(allocator.active(), os.getpid(), sys.argv[1:])"


def run_probe(**env) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_CHAT_RETRAIN_ALLOCATOR_REEXEC")}
    process = subprocess.run([sys.executable, "-c", PROBE, "--flag", "value"], capture_output=True, text=True,
                             env={**environment, **env}, check=True, timeout=60)
    assert process.stderr == ""  # no loader complaints, no tcmalloc reports
    return process.stdout.split()


def test_auto_uses_tcmalloc_where_installed_else_the_system_allocator():
    active, _, *arguments = run_probe()
    assert active == ("tcmalloc" if allocator.find() else "system")
    assert arguments == ["['--flag',", "'value']"]  # the same arguments after the re-exec


def test_system_choice_keeps_the_c_library_malloc():
    assert run_probe(CHAT_RETRAIN_ALLOCATOR="system")[0] == "system"


def test_a_missing_library_runs_on_the_system_allocator(monkeypatch):
    monkeypatch.setattr(allocator, "LIBRARIES", ("no_such_allocator_xyz",))
    monkeypatch.delenv(allocator.CHOICE, raising=False)
    monkeypatch.delenv("_CHAT_RETRAIN_ALLOCATOR_REEXEC", raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail(f"re-executed with {a}"))
    monkeypatch.setattr(allocator, "active", lambda: "system")
    allocator.use_tcmalloc()  # returns: nothing to preload


def test_an_unknown_choice_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(allocator.CHOICE, "jemalloc")
    with pytest.raises(SystemExit, match="CHAT_RETRAIN_ALLOCATOR='jemalloc'.*auto.*system"):
        allocator.use_tcmalloc()


@pytest.mark.skipif(allocator.find() is None, reason="tcmalloc is not installed here (apt install libtcmalloc-minimal4)")
def test_the_stage_command_itself_runs_on_tcmalloc():
    """The real entry point, as every Airflow task starts it: its stage runs would be tagged pipeline.allocator."""
    code = ("import runpy, sys, atexit; from pipeline.process import allocator; "
            "atexit.register(lambda: print('ALLOCATOR', allocator.active())); "
            "sys.argv = ['pipeline', '--help']; runpy.run_module('pipeline', run_name='__main__')")
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_CHAT_RETRAIN_ALLOCATOR_REEXEC")}
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                             timeout=120)
    assert "usage: python -m pipeline" in process.stdout
    assert "ALLOCATOR tcmalloc" in process.stdout
