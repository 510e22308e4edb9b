"""tvts.allocator: a program re-executes itself once under mimalloc, keeping its pid and command line."""
import os
import subprocess
import sys
import textwrap

import pytest

from tvts import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD re-exec is Linux-only")

PROGRAM = textwrap.dedent("""
    import os, sys
    from tvts import allocator
    print("run", os.getpid(), allocator.mimalloc_loaded(), sys.argv[1:], flush=True)
    allocator.reexec_with_mimalloc()
    print("main", os.getpid(), allocator.mimalloc_loaded(), flush=True)
""")


def run_program(tmp_path, env_extra=None):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OPT_OUT, "_TVTS_REEXECUTED")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-u", str(script), "--flag=1", "x y"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [line.split(" ", 3) for line in out.splitlines()]


def test_the_installed_library_is_found():
    path = allocator.mimalloc_library()
    assert path is not None and os.path.isfile(path) and "libmimalloc.so" in os.path.basename(path)


def test_reexec_once_under_mimalloc_with_the_same_pid_and_arguments(tmp_path):
    lines = run_program(tmp_path)
    assert [l[0] for l in lines] == ["run", "run", "main"]      # started twice, the body ran once
    pids = {l[1] for l in lines}
    assert len(pids) == 1                                        # exec, not a child process
    assert lines[0][2] == "False" and lines[1][2] == "True" and lines[2][2] == "True"
    assert lines[0][3] == lines[1][3] == "['--flag=1', 'x y']"


def test_opt_out_keeps_the_system_allocator(tmp_path):
    lines = run_program(tmp_path, {allocator.OPT_OUT: "system"})
    assert [(l[0], l[2]) for l in lines] == [("run", "False"), ("main", "False")]


@pytest.mark.parametrize("env, devices, expected", [
    ({}, (), True),                                            # a CPU host
    ({"JAX_PLATFORMS": "cpu"}, ("/dev/accel*",), True),        # CPU asked for on a TPU host
    ({"JAX_PLATFORMS": "tpu,cpu"}, (), False),
    ({"JAX_PLATFORMS": "cuda"}, (), False),
    ({"TPU_WORKER_ID": "3"}, (), False),                       # a TPU VM worker
    ({}, ("{dev}",), False),                                   # accelerator device files present
    ({"TPU_WORKER_ID": "3", allocator.OPT_OUT: "mimalloc"}, (), True),  # opted in on an accelerator host
    ({allocator.OPT_OUT: "system"}, (), False),                # opted out on a CPU host
])
def test_mimalloc_only_where_it_was_measured_unless_opted_in(tmp_path, env, devices, expected):
    (tmp_path / "accel0").touch()
    globs = tuple(g.replace("{dev}", str(tmp_path / "accel*")) for g in devices)
    if "/dev/accel*" in globs:  # stand-in for a TPU host's device file
        globs = (str(tmp_path / "accel*"),)
    assert allocator.wanted(env, globs) is expected
