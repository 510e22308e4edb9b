"""launch/tpu_pod.py without a cloud.

- Every subcommand's --dry_run output is compared line by line with the expected commands.
- The remote shell it builds (setup, run, stop, status) is executed locally with bash, $HOME pointed at
  a temporary directory, a fake `uv`, a fake venv and a fake libtpu lock / TPU device file.
- Secrets given with --forward_env appear in no printed line and in no command's argv.
- The shipped file list honours .gitignore; relaunch issues delete, create, setup, run in order.
Every subprocess has a timeout, so a hang fails the test instead of stalling the suite.
"""
import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POD = REPO / "launch" / "tpu_pod.py"
TIMEOUT = 60


def _load():
  spec = importlib.util.spec_from_file_location("tvts_launch_tpu_pod_v2", POD)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_pod = _load()

GC = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]
COMMON = ["--name", "pod", "--zone", "us-east5-a", "--project", "my-proj"]
LOC = ["--zone=us-east5-a", "--project=my-proj"]
TRAIN = ["python", "-m", "tvts.train", "--config", "configs/pretrain.py:variant=B/16",
         "--workdir", "gs://bucket/run1"]
SECRET = "s3cr3t-'$(touch /tmp/pwned)' \"x\""
LOG = 'log="$HOME"/tvts_logs/tvts.$(hostname).log; pid="$HOME"/tvts_logs/tvts.$(hostname).pid; '


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
  for var in ("TVTS_TPU_NAME", "TVTS_TPU_ZONE", "TVTS_TPU_PROJECT"):
    monkeypatch.delenv(var, raising=False)
  # A gcloud that only fails, first on PATH: no test may reach a real cloud by mistake.
  (tmp_path / "fakebin").mkdir()
  (tmp_path / "fakebin/gcloud").write_text("#!/bin/sh\necho fake gcloud called >&2\nexit 97\n")
  (tmp_path / "fakebin/gcloud").chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path / 'fakebin'}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("TMPDIR", str(tmp_path / "localtmp"))
  (tmp_path / "localtmp").mkdir()
  import tempfile
  monkeypatch.setattr(tempfile, "tempdir", None)  # Re-read TMPDIR.


def dry_run(argv, env=None):
  """stdout lines of `launch/tpu_pod.py SUB --dry_run ARGS` in a real subprocess."""
  env = {**os.environ, **(env or {})}
  proc = subprocess.run([sys.executable, str(POD), argv[0], "--dry_run", *argv[1:]], env=env,
                        capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines(), proc.stderr


def remote(line_or_argv) -> str:
  argv = shlex.split(line_or_argv) if isinstance(line_or_argv, str) else line_or_argv
  (flag,) = [a for a in argv if a.startswith("--command=")]
  return flag[len("--command="):]


def ssh_line(command: str, worker: str = "all", extra=()) -> str:
  return shlex.join(GC + ["ssh", "pod", *LOC, f"--worker={worker}", *extra, f"--command={command}"])


def private(tmp_path) -> Path:
  return tmp_path / "localtmp" / f"tvts-pod-{os.getuid()}"


def git_repo(path: Path) -> Path:
  """A checkout with tracked, untracked, ignored and deleted-but-tracked files."""
  path.mkdir()
  files = {"setup.py": "x", "tvts/__init__.py": "", "tvts/gone.py": "old", "docs/a b.md": "sp",
           ".gitignore": "/.venv/\n/workdirs/\n*.pyc\n__pycache__/\n", "sub/.gitignore": "local.txt\n"}
  for name, text in files.items():
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)
  run = lambda *a: subprocess.run(["git", "-C", str(path), *a], check=True, capture_output=True,
                                  timeout=TIMEOUT)
  run("init", "-q")
  run("add", ".")
  run("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")
  (path / "tvts/gone.py").unlink()  # Tracked, deleted locally: must not be shipped.
  for name in (".venv/bin/python", "workdirs/run/ckpt", "tvts/x.pyc", "tvts/__pycache__/m.pyc",
               "sub/local.txt"):
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text("ignored")
  (path / "new_module.py").write_text("untracked, not ignored")
  (path / "sub/kept.txt").write_text("kept")
  return path


SHIPPED = [".gitignore", "docs/a b.md", "new_module.py", "setup.py", "sub/.gitignore", "sub/kept.txt",
           "tvts/__init__.py"]


# ---------------------------------------------------------------------------------------------------
# create / delete / logs / ssh
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--accelerator_type", "v5p-256", "--spot"],
     GC + ["create", "pod", *LOC, "--accelerator-type=v5p-256", "--version=v2-alpha-tpuv5", "--spot"]),
    (["--accelerator_type", "v5litepod-256", "--reserved", "--internal_ips", "--service_account",
      "sa@my-proj.iam.gserviceaccount.com", "--scopes", "https://www.googleapis.com/auth/cloud-platform",
      "--labels", "team=vision,run=b16", "--label", "owner=ana"],
     GC + ["create", "pod", *LOC, "--accelerator-type=v5litepod-256", "--version=v2-alpha-tpuv5-lite",
           "--reserved", "--internal-ips", "--service-account=sa@my-proj.iam.gserviceaccount.com",
           "--scopes=https://www.googleapis.com/auth/cloud-platform",
           "--labels=team=vision,run=b16,owner=ana"]),
    (["--accelerator_type", "v4-512", "--version", "my-runtime", "--network", "net", "--subnetwork", "sub"],
     GC + ["create", "pod", *LOC, "--accelerator-type=v4-512", "--version=my-runtime", "--network=net",
           "--subnetwork=sub"]),
])
def test_create(flags, expected):
  assert dry_run(["create", *COMMON, *flags])[0] == [shlex.join(expected)]


def test_create_queued():
  lines, _ = dry_run(["create", *COMMON, "--accelerator_type", "v5p-256", "--spot", "--queued",
                      "--valid_until_duration", "6h", "--wait", "--poll_seconds", "30"])
  assert lines == [
      shlex.join(QR + ["create", "pod", *LOC, "--node-id=pod", "--accelerator-type=v5p-256",
                       "--runtime-version=v2-alpha-tpuv5", "--spot", "--valid-until-duration=6h"]),
      "# poll every 30 s until the queued resource is ACTIVE (stops on SUSPENDED or FAILED)",
      shlex.join(QR + ["describe", "pod", *LOC, "--format=value(state.state)"]),
  ]


@pytest.mark.parametrize("flags, message", [
    (["--accelerator_type", "v4-8", "--spot", "--reserved"], "mutually exclusive"),
    (["--accelerator_type", "v4-8", "--labels", "Team=x"], "--labels: 'Team=x'"),
    (["--accelerator_type", "v4-8", "--labels", "team"], "--labels: 'team'"),
    (["--accelerator_type", "v9-8"], "pass --version"),
])
def test_create_errors(flags, message):
  proc = subprocess.run([sys.executable, str(POD), "create", *COMMON, *flags, "--dry_run"],
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode != 0 and message in proc.stderr


def test_delete_logs_ssh():
  assert dry_run(["delete", *COMMON, "--yes"])[0] == [shlex.join(GC + ["delete", "pod", *LOC, "--quiet"])]
  assert dry_run(["delete", *COMMON, "--queued", "--yes", "--async"])[0] == [
      shlex.join(QR + ["delete", "pod", *LOC, "--force", "--quiet", "--async"])]
  assert dry_run(["logs", *COMMON, "--worker", "3", "--follow"])[0] == [
      ssh_line('tail -n 100 -F "$HOME"/tvts_logs/tvts.$(hostname).log', worker="3")]
  assert dry_run(["ssh", *COMMON, "--worker", "2"])[0] == [shlex.join(GC + ["ssh", "pod", *LOC, "--worker=2"])]
  assert dry_run(["ssh", *COMMON, "--internal_ip", "--", "ls", "a b", "$HOME"])[0] == [
      ssh_line("ls \"a b\" '$HOME'", worker="0", extra=["--internal-ip"])]


def test_missing_name_zone_project_name_the_variables(monkeypatch, capsys):
  proc = subprocess.run([sys.executable, str(POD), "stop", "--name", "pod", "--dry_run"],
                        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ})
  assert proc.returncode == 2 and "--zone is required: pass --zone or set $TVTS_TPU_ZONE" in proc.stderr
  proc = subprocess.run([sys.executable, str(POD), "stop", "--zone", "z", "--dry_run"],
                        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ})
  assert proc.returncode == 2 and "$TVTS_TPU_NAME" in proc.stderr
  # Defaults from the environment.
  lines, _ = dry_run(["delete"], env={"TVTS_TPU_NAME": "envpod", "TVTS_TPU_ZONE": "europe-west4-a"})
  assert lines == [shlex.join(GC + ["delete", "envpod", "--zone=europe-west4-a"])]
  # A real launch with no project anywhere stops before running anything.
  monkeypatch.setattr(tpu_pod, "configured_project", lambda: "")
  monkeypatch.setattr(tpu_pod.subprocess, "call", lambda *a, **k: pytest.fail("ran a command"))
  with pytest.raises(SystemExit, match=r"--project, set \$TVTS_TPU_PROJECT"):
    tpu_pod.main(["delete", "--name", "pod", "--zone", "z"])


def test_session_name_is_checked():
  proc = subprocess.run([sys.executable, str(POD), "stop", *COMMON, "--session", "a b;rm", "--dry_run"],
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 2 and "--session 'a b;rm'" in proc.stderr


def test_dry_run_after_double_dash_is_rejected():
  proc = subprocess.run([sys.executable, str(POD), "run", *COMMON, "--", *TRAIN, "--dry_run"],
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 2 and "put --dry_run before '--'" in proc.stderr
  with pytest.raises(SystemExit):
    tpu_pod.parse_args(["relaunch", *COMMON, "--accelerator_type", "v5p-8", "--", "x", "--dry-run"])


@pytest.mark.parametrize("flags, message", [
    (["--env", "BAD-KEY=1"], "--env: 'BAD-KEY' is not a valid variable name"),
    (["--env", "1X=1"], "--env: '1X' is not a valid variable name"),
    (["--env", "NOEQUALS"], "--env expects KEY=VALUE"),
    (["--forward_env", "A B"], "--forward_env: 'A B' is not a valid variable name"),
    (["--forward_env", "TVTS_SURELY_UNSET_VAR"], "not set in the local environment"),
])
def test_run_rejects_bad_env(flags, message):
  with pytest.raises(SystemExit, match=message):
    tpu_pod.build_steps(["run", *COMMON, *flags, "--", "true"])


# ---------------------------------------------------------------------------------------------------
# setup: shipping and Python
# ---------------------------------------------------------------------------------------------------
def test_shipped_files_honour_gitignore(tmp_path):
  repo = git_repo(tmp_path / "repo")
  assert tpu_pod.shipped_files(repo) == SHIPPED
  tarball = tmp_path / "src.tar.gz"
  tpu_pod.pack(repo, tpu_pod.shipped_files(repo), tarball)
  with tarfile.open(tarball) as tar:
    assert sorted(tar.getnames()) == SHIPPED
    assert {m.uname for m in tar.getmembers()} == {""}
  with pytest.raises(SystemExit, match="not a git checkout"):
    tpu_pod.shipped_files(tmp_path)


def _setup_tail(python="3.11", extra=""):
  return ('export PATH="$HOME/.local/bin:$PATH"; command -v uv > /dev/null || curl -LsSf '
          'https://astral.sh/uv/install.sh | env UV_INSTALL_DIR="$HOME/.local/bin" UV_NO_MODIFY_PATH=1 sh; '
          f'uv python install {python}; "$HOME"/tvts-venv/bin/python -c "import sys; '
          f'sys.exit(sys.version_info[:2] != ({python.replace(".", ", ")}))" 2> /dev/null || '
          f'{{ rm -rf "$HOME"/tvts-venv && uv venv --seed --python {python} "$HOME"/tvts-venv; }}; '
          f'uv pip install --python "$HOME"/tvts-venv/bin/python --upgrade "jax[tpu]>=0.10,<0.11"{extra} '
          '-e "$HOME"/tvts; echo "[tvts] $(hostname): $("$HOME"/tvts-venv/bin/python --version) in '
          'tvts-venv, tvts from tvts"')


SETUP_HEAD = ("set -eu; " + LOG + tpu_pod.state_functions()
              + 'if tvts_live; then echo "[tvts] $(hostname): run tvts is live; stop it before setup" >&2; '
                "exit 3; fi; ")
SWAP = ('rm -rf "$HOME"/tvts.new && mkdir -p "$HOME"/tvts.new && tar -xzf "$HOME"/tvts-src.tar.gz -C '
        '"$HOME"/tvts.new && rm -f "$HOME"/tvts-src.tar.gz && rm -rf "$HOME"/tvts.old && '
        '{ [ ! -e "$HOME"/tvts ] || mv "$HOME"/tvts "$HOME"/tvts.old; } && mv "$HOME"/tvts.new "$HOME"/tvts '
        '&& rm -rf "$HOME"/tvts.old; ')


def test_setup_copy_dry_run(tmp_path):
  repo = git_repo(tmp_path / "repo")
  tarball = private(tmp_path) / "tvts-src-pod.tar.gz"
  lines, _ = dry_run(["setup", *COMMON, "--local_dir", str(repo)], env={"TMPDIR": str(tmp_path / "localtmp")})
  assert lines == [
      f"# pack {len(SHIPPED)} files of {repo} (git ls-files --cached --others --exclude-standard) into {tarball}",
      shlex.join(GC + ["scp", str(tarball), "pod:tvts-src.tar.gz", *LOC, "--worker=all"]),
      ssh_line(SETUP_HEAD + SWAP + _setup_tail()),
  ]
  assert not private(tmp_path).exists()  # A dry run writes nothing.


def test_setup_stage_and_options(tmp_path):
  repo = git_repo(tmp_path / "repo")
  tarball = private(tmp_path) / "tvts-src-pod.tar.gz"
  lines, _ = dry_run(["setup", *COMMON, "--local_dir", str(repo), "--stage", "gs://b/stage/", "--python",
                      "3.12", "--pip_extra", "tpu-info>=0.2", "--pip_find_links", "https://x/libtpu.html"],
                     env={"TMPDIR": str(tmp_path / "localtmp")})
  get = 'gcloud storage cp gs://b/stage/tvts-src-pod.tar.gz "$HOME"/tvts-src.tar.gz && '
  assert lines[1:] == [
      shlex.join(["gcloud", "storage", "cp", str(tarball), "gs://b/stage/tvts-src-pod.tar.gz"]),
      ssh_line(SETUP_HEAD + get + SWAP + _setup_tail("3.12").replace(
          '--upgrade "jax', '--upgrade --find-links https://x/libtpu.html "jax').replace(
          '<0.11"', '<0.11" "tpu-info>=0.2"')),
  ]


def test_setup_git_and_bad_python():
  lines, _ = dry_run(["setup", *COMMON, "--source", "git", "--repo_url", "https://example.com/tvts.git",
                      "--ref", "v0.1.0", "--internal_ip"])
  fetch = ('{ [ -d "$HOME"/tvts/.git ] || git clone https://example.com/tvts.git "$HOME"/tvts; } && '
           'git -C "$HOME"/tvts fetch --tags origin v0.1.0 && git -C "$HOME"/tvts checkout --detach FETCH_HEAD; ')
  assert lines == [ssh_line(SETUP_HEAD + fetch + _setup_tail(), extra=["--internal-ip"])]
  for bad in ("3.10", "python3", "3"):
    with pytest.raises(SystemExit, match="--python"):
      tpu_pod.build_steps(["setup", *COMMON, "--source", "git", "--repo_url", "u", "--python", bad])


FAKE_UV = """#!/bin/bash
echo "uv $*" >> "$HOME/uv.calls"
if [ "$1" = venv ]; then d="${@: -1}"; mkdir -p "$d/bin"; ln -sf "$FAKE_PY" "$d/bin/python"; touch "$d/bin/activate"; fi
exit 0
"""


def test_setup_script_runs_swaps_tree_and_makes_venv(tmp_path):
  """The remote setup, executed locally: the old tree is replaced (deleted files go), uv makes the venv."""
  repo, home = git_repo(tmp_path / "repo"), tmp_path / "home"
  (home / ".local/bin").mkdir(parents=True)
  (home / ".local/bin/uv").write_text(FAKE_UV)
  (home / ".local/bin/uv").chmod(0o755)
  (home / "tvts/tvts").mkdir(parents=True)
  (home / "tvts/tvts/gone.py").write_text("stale")  # From an older setup.
  tpu_pod.pack(repo, tpu_pod.shipped_files(repo), home / "tvts-src.tar.gz")
  (_, _, ssh) = [s.argv for s in tpu_pod.build_steps(["setup", *COMMON, "--local_dir", str(repo)])]
  env = {**os.environ, "HOME": str(home), "FAKE_PY": sys.executable}
  for attempt in range(2):  # Twice: the second finds the venv and keeps it.
    if attempt:
      tpu_pod.pack(repo, tpu_pod.shipped_files(repo), home / "tvts-src.tar.gz")
    proc = subprocess.run(["bash", "-c", remote(ssh)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
  assert sorted(str(p.relative_to(home / "tvts")) for p in (home / "tvts").rglob("*") if p.is_file()) == SHIPPED
  assert not (home / "tvts.new").exists() and not (home / "tvts.old").exists()
  assert not (home / "tvts-src.tar.gz").exists()
  calls = (home / "uv.calls").read_text().splitlines()
  assert calls == [
      "uv python install 3.11", f"uv venv --seed --python 3.11 {home}/tvts-venv",
      f"uv pip install --python {home}/tvts-venv/bin/python --upgrade jax[tpu]>=0.10,<0.11 -e {home}/tvts",
      "uv python install 3.11",
      f"uv pip install --python {home}/tvts-venv/bin/python --upgrade jax[tpu]>=0.10,<0.11 -e {home}/tvts"]
  assert "Python 3." in proc.stdout


# ---------------------------------------------------------------------------------------------------
# run, stop, status: the remote scripts executed locally
# ---------------------------------------------------------------------------------------------------
class Worker:
  """A fake TPU worker: $HOME in a temp dir with the project and a venv; fake lock and TPU device."""

  def __init__(self, tmp_path: Path):
    self.home = tmp_path / "home"
    (self.home / "tvts").mkdir(parents=True)
    (self.home / "tvts-venv/bin").mkdir(parents=True)
    (self.home / "tvts-venv/bin/python").symlink_to(sys.executable)
    (self.home / "tvts-venv/bin/activate").write_text("export TVTS_VENV_ACTIVE=1\n")
    self.lock = tmp_path / "libtpu_lockfile"
    self.device = tmp_path / "accel0"
    self.device.write_text("")
    self.session = "t" + uuid.uuid4().hex[:8]  # Never a real tmux session of this machine.
    self.logs = tmp_path / "copied_logs"
    self.env = {**os.environ, "HOME": str(self.home)}

  def args(self, *flags, command=("true",), sub="run"):
    return tpu_pod.parse_args([sub, *COMMON, "--session", self.session, "--stop_grace", "1", *flags,
                               *(["--", *command] if sub == "run" else [])])

  def script(self, kind: str, args) -> str:
    extra = dict(lock_file=str(self.lock), device_globs=[str(self.device)])
    if kind == "start":
      return tpu_pod.start_script(args, tpu_pod._log_dest(args), **extra)
    return getattr(tpu_pod, f"{kind}_script")(args, **extra)

  def sh(self, script: str, shell: str = "bash") -> subprocess.CompletedProcess:
    return subprocess.run([shell, "-c", script], env=self.env, capture_output=True, text=True,
                          timeout=TIMEOUT)

  @property
  def log(self) -> Path:
    return self.home / "tvts_logs" / f"{self.session}.{os.uname().nodename}.log"

  @property
  def pid(self) -> Path:
    return self.home / "tvts_logs" / f"{self.session}.{os.uname().nodename}.pid"

  def wait_for(self, predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
      assert time.monotonic() < deadline, f"timed out waiting for {what}; log: " + (
          self.log.read_text() if self.log.exists() else "(none)")
      time.sleep(0.05)

  def group_alive(self, pgid: int) -> bool:
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    rows = (line.split()[:2] for line in out.splitlines())
    return any(int(group) == pgid and not state.startswith("Z") for group, state in rows)


@pytest.fixture
def worker(tmp_path):
  w = Worker(tmp_path)
  yield w
  if w.pid.exists():  # A failed test must not leave its fake run behind.
    try:
      os.killpg(int(w.pid.read_text()), 9)
    except (ProcessLookupError, ValueError):
      pass


def test_run_dry_run_exact_and_secrets_stay_out_of_every_command(tmp_path):
  env = {"TMPDIR": str(tmp_path / "localtmp"), "WANDB_API_KEY": SECRET}
  lines, err = dry_run(["run", *COMMON, "--forward_env", "WANDB_API_KEY", "--env", "XLA_FLAGS=--a --b",
                        "--log_sync_minutes", "5", "--", *TRAIN], env=env)
  local_env = private(tmp_path) / "pod.tvts.env"
  sync = ('tvts_sync_end() { kill "$s" 2>/dev/null; exit 0; }; ( trap tvts_sync_end TERM; while :; do '
          'sleep 300 & s=$!; wait $s; { gcloud storage cp "$log" gs://bucket/run1/pod_logs/tvts.$(hostname).log '
          '> /dev/null 2>&1 || echo "[tvts] could not copy this log to gs://bucket/run1/pod_logs" >> "$log"; }; '
          'done ) & sync=$!; ')
  copy = ('{ gcloud storage cp "$log" gs://bucket/run1/pod_logs/tvts.$(hostname).log > /dev/null 2>&1 || '
          'echo "[tvts] could not copy this log to gs://bucket/run1/pod_logs" >> "$log"; }')
  job = (LOG + 'tvts_on_term() { echo "[tvts] SIGTERM: waiting for the command to exit ($(date -u +%FT%TZ))" '
         '>> "$log"; }; trap tvts_on_term TERM; ps -o pgid= -p $$ | tr -d " " > "$pid"; '
         'echo "[tvts] start on $(hostname) ($(date -u +%FT%TZ))" >> "$log"; ' + sync
         + '{ cd "$HOME"/tvts && . "$HOME"/tvts-venv/bin/activate && { [ ! -f "$HOME"/.tvts-tvts.env ] || '
           '{ . "$HOME"/.tvts-tvts.env && rm -f "$HOME"/.tvts-tvts.env; }; } && export XLA_FLAGS="--a --b" && '
           'python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://bucket/run1; } '
           '>> "$log" 2>&1; code=$?; kill -TERM "$sync" 2>/dev/null; wait "$sync" 2>/dev/null; '
           'echo "[tvts] exit code $code ($(date -u +%FT%TZ))" >> "$log"; ' + copy + '; rm -f "$pid"; exit $code')
  start = ('mkdir -p "$HOME"/tvts_logs && ' + LOG + tpu_pod.state_functions() + tpu_pod.stop_functions("tvts", 120)
           + 'why=; l=$(tvts_holders); if tvts_live; then why="run tvts is live (process group $(cat "$pid"))"; '
             'elif [ -n "$l" ]; then why="processes ${l}hold the TPU"; fi; if [ -n "$why" ]; then echo "[tvts] '
             '$(hostname): not started: $why; stop it first (launch/tpu_pod.py stop) or pass --replace" >&2; '
             'rm -f "$HOME"/.tvts-tvts.env; exit 3; fi; if [ ! -x "$HOME"/tvts-venv/bin/python ]; then echo '
             '"[tvts] $(hostname): no Python environment at tvts-venv: run launch/tpu_pod.py setup first" >&2; '
             'exit 4; fi; tvts_stop || exit 1; tmux new-session -d -s tvts bash -c ' + shlex.quote(job))
  assert lines == [
      f"# write WANDB_API_KEY (values not shown) to {local_env} (mode 0600)",
      shlex.join(GC + ["scp", str(local_env), "pod:.tvts-tvts.env", *LOC, "--worker=all"]),
      ssh_line(start),
  ]
  assert not local_env.exists()
  for text in (*lines, err):
    assert SECRET not in text and "s3cr3t" not in text


def test_secrets_never_in_argv_or_output_of_a_real_launch(tmp_path, monkeypatch, capsys):
  """A real (not dry) run and relaunch with a fake gcloud: the secret travels only in the 0600 file."""
  repo = git_repo(tmp_path / "repo")
  monkeypatch.setenv("WANDB_API_KEY", SECRET)
  monkeypatch.setattr(tpu_pod, "configured_project", lambda: "from-gcloud")
  seen = []

  def fake_call(argv):
    seen.append(list(argv))
    if argv[:5] == GC + ["scp"] and argv[5].endswith(".env"):
      mode = stat.S_IMODE(os.stat(argv[5]).st_mode)
      assert mode == 0o600
      assert Path(argv[5]).read_text() == f"export WANDB_API_KEY={shlex.quote(SECRET)}\n"
      assert stat.S_IMODE(os.stat(argv[5]).st_mode & 0o777) == 0o600
      assert stat.S_IMODE(private(tmp_path).stat().st_mode) == 0o700
    return 0

  def fake_run(argv, **kw):
    seen.append(list(argv))
    out = "PREEMPTED\n" if "describe" in argv else ""
    return subprocess.CompletedProcess(argv, 0, out, "")
  monkeypatch.setattr(tpu_pod.subprocess, "call", fake_call)
  monkeypatch.setattr(tpu_pod.subprocess, "run", fake_run)
  monkeypatch.setattr(tpu_pod, "shipped_files", lambda d: SHIPPED)
  assert tpu_pod.main(["run", "--name", "pod", "--zone", "z", "--forward_env", "WANDB_API_KEY", "--", *TRAIN]) == 0
  assert tpu_pod.main(["relaunch", "--name", "pod", "--zone", "z", "--accelerator_type", "v5p-256",
                       "--local_dir", str(repo), "--forward_env", "WANDB_API_KEY", "--", *TRAIN]) == 0
  out = capsys.readouterr()
  assert len(seen) == 2 + 7
  for argv in seen:
    assert not any("s3cr3t" in a for a in argv)
  assert "s3cr3t" not in out.out + out.err
  assert list(private(tmp_path).iterdir()) == []  # Tarball and env file removed after the launch.


def test_env_file_mode_and_content(tmp_path):
  path = tmp_path / "x.env"
  path.write_text("old")
  path.chmod(0o644)  # A wider mode from before is narrowed.
  tpu_pod.write_env_file(path, {"A": SECRET, "B": "plain"})
  assert stat.S_IMODE(path.stat().st_mode) == 0o600
  out = subprocess.run(["bash", "-c", f". {shlex.quote(str(path))}; printf %s \"$A\""], capture_output=True,
                       text=True, timeout=TIMEOUT).stdout
  assert out == SECRET and not Path("/tmp/pwned").exists()


def test_run_quoting_env_file_and_log_copy(worker):
  """Arguments with spaces, quotes and $ arrive intact; the env file is sourced then deleted; the log
  is copied when the run exits; the pid file goes."""
  args_in = ["a b", "it's", "$HOME", 'x"y', "back\\slash", "!bang", ""]
  code = ("import os, sys; print(sys.argv[1:]); "
          "print(os.environ['TOK'], os.environ['MSG'], os.environ['TVTS_VENV_ACTIVE'])")
  args = worker.args("--mode", "nohup", "--env", "MSG=it's $x", "--forward_env", "PATH",
                     "--copy_logs_to", str(worker.logs), command=(sys.executable, "-c", code, *args_in))
  tpu_pod.write_env_file(worker.home / f".tvts-{worker.session}.env", {"TOK": SECRET})
  proc = worker.sh(worker.script("start", args))
  assert proc.returncode == 0, proc.stderr
  worker.wait_for(lambda: worker.log.exists() and "exit code" in worker.log.read_text(), "the run to end")
  worker.wait_for(lambda: not worker.pid.exists(), "the pid file to go")
  text = worker.log.read_text()
  assert repr(args_in) in text and f"{SECRET} it's $x 1" in text
  assert "[tvts] exit code 0" in text
  assert not (worker.home / f".tvts-{worker.session}.env").exists()
  (copied,) = worker.logs.glob(f"{worker.session}.*.log")
  assert "[tvts] exit code 0" in copied.read_text()


def test_run_foreground_streams_and_writes_the_log(worker):
  args = worker.args("--mode", "foreground", command=(sys.executable, "-c", "print('hello pod')"))
  proc = worker.sh(worker.script("start", args))
  assert proc.returncode == 0 and "hello pod" in proc.stdout, proc.stderr
  assert "hello pod" in worker.log.read_text() and not worker.pid.exists()


def test_run_without_venv_says_run_setup(worker):
  for p in (worker.home / "tvts-venv/bin").iterdir():
    p.unlink()
  proc = worker.sh(worker.script("start", worker.args("--mode", "nohup")))
  assert proc.returncode == 4 and "run launch/tpu_pod.py setup first" in proc.stderr


def test_run_refuses_while_live_then_replace_stops_it(worker):
  sleeper = ("bash", "-c", "echo first-run; sleep 30")
  args = worker.args("--mode", "nohup", command=sleeper)
  assert worker.sh(worker.script("start", args)).returncode == 0
  worker.wait_for(lambda: worker.pid.exists() and worker.pid.read_text().strip(), "the pid file")
  first = int(worker.pid.read_text())
  proc = worker.sh(worker.script("start", args))
  assert proc.returncode == 3
  assert f"not started: run {worker.session} is live (process group {first})" in proc.stderr
  assert "or pass --replace" in proc.stderr and worker.group_alive(first)
  # --replace: SIGTERM (bash and sleep die of it), then the new run starts.
  worker.lock.write_text("")
  args2 = worker.args("--mode", "nohup", "--replace", command=("bash", "-c", "echo second-run; sleep 30"))
  proc = worker.sh(worker.script("start", args2))
  assert proc.returncode == 0, proc.stderr
  assert f"SIGTERM to process group {first}" in proc.stdout and "SIGKILL" not in proc.stdout
  assert not worker.group_alive(first) and not worker.lock.exists()
  worker.wait_for(lambda: "second-run" in worker.log.read_text(), "the second run")
  assert worker.sh(worker.script("stop", args2)).returncode == 0


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_stop_escalates_to_kill_and_clears_the_lock(worker, shell):
  """A fake worker process that ignores SIGTERM: stop waits the grace, SIGKILLs, removes pid and lock.
  Also under dash, in case a worker's login shell is a plain POSIX sh."""
  if not shutil.which(shell):
    pytest.skip(f"{shell} not installed")
  stubborn = ("bash", "-c", "trap '' TERM; echo stubborn; sleep 60")
  args = worker.args("--mode", "nohup", command=stubborn)
  assert worker.sh(worker.script("start", args)).returncode == 0
  worker.wait_for(lambda: worker.log.exists() and "stubborn" in worker.log.read_text(), "the run")
  group = int(worker.pid.read_text())
  worker.lock.write_text("")  # What libtpu leaves behind when its process is killed.
  t0 = time.monotonic()
  proc = worker.sh(worker.script("stop", args), shell)
  assert proc.returncode == 0, proc.stderr
  assert time.monotonic() - t0 >= 1.0  # The grace period was waited.
  host = os.uname().nodename
  assert proc.stdout.splitlines() == [
      f"[tvts] {host}: SIGTERM to process group {group}",
      f"[tvts] {host}: still running after 1 s: SIGKILL",
      f"[tvts] {host}: removed {worker.lock}"]
  assert not worker.group_alive(group)
  assert not worker.pid.exists() and not worker.lock.exists()
  assert "killed by stop after 1 s" in worker.log.read_text()


def test_stop_lets_a_cooperative_run_exit_and_copy_its_log(worker):
  """SIGTERM only: the command exits by itself, the job logs the exit code and copies the log."""
  code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print('checkpoint saved', "
          "flush=True), sys.exit(0))); print('training', flush=True); time.sleep(30)")
  args = worker.args("--mode", "nohup", "--copy_logs_to", str(worker.logs), command=(sys.executable, "-c", code))
  args.stop_grace = 20
  assert worker.sh(worker.script("start", args)).returncode == 0
  worker.wait_for(lambda: worker.log.exists() and "training" in worker.log.read_text(), "the run")
  proc = worker.sh(worker.script("stop", args))
  assert proc.returncode == 0 and "SIGKILL" not in proc.stdout, proc.stdout + proc.stderr
  worker.wait_for(lambda: list(worker.logs.glob("*.log")), "the copied log")
  text = worker.log.read_text()
  assert "checkpoint saved" in text and "[tvts] SIGTERM: waiting" in text and "[tvts] exit code 0" in text


def test_leftover_tpu_holder_blocks_run_and_is_stopped(worker, tmp_path):
  """A process outside the run's group that still holds the TPU device file: run refuses, stop kills it."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
       "f = open(sys.argv[1]); print('ready', flush=True); time.sleep(60)", str(worker.device)],
      stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert holder.stdout.readline() == "ready\n"
    worker.lock.write_text("")
    args = worker.args("--mode", "nohup")
    proc = worker.sh(worker.script("start", args))
    assert proc.returncode == 3 and f"not started: processes {holder.pid} hold the TPU" in proc.stderr
    status = worker.sh(worker.script("status", args))
    assert f"TPU held by {holder.pid}" in status.stdout
    proc = worker.sh(worker.script("stop", args))
    assert proc.returncode == 0, proc.stderr
    assert f"processes {holder.pid} still hold the TPU: SIGTERM" in proc.stdout
    assert f"SIGKILL to {holder.pid}" in proc.stdout
    assert holder.wait(timeout=10) == -9 and not worker.lock.exists()
  finally:
    holder.kill()


def test_status_script(worker):
  host = os.uname().nodename
  args = worker.args("--mode", "nohup", command=("bash", "-c", "echo working; sleep 30"))
  assert worker.sh(worker.script("status", args)).stdout == f"{host}: no run yet | \n"
  worker.sh(worker.script("start", args))
  worker.wait_for(lambda: worker.log.exists() and "working" in worker.log.read_text(), "the run")
  group = worker.pid.read_text().strip()
  assert worker.sh(worker.script("status", args)).stdout == (
      f"{host}: running (process group {group}) | working\n")
  worker.sh(worker.script("stop", args))
  worker.lock.write_text("")
  out = worker.sh(worker.script("status", args)).stdout
  assert out.startswith(f"{host}: not running, last exit code 143 (") and f"; stale {worker.lock} | " in out


def test_status_dry_run():
  lines, _ = dry_run(["status", *COMMON, "--queued"])
  assert lines[:4] == [
      "# the queued resource's state",
      shlex.join(QR + ["describe", "pod", *LOC, "--format=value(state.state)"]),
      "# the VM's state; the workers are asked only when it is READY",
      shlex.join(GC + ["describe", "pod", *LOC, "--format=value(state)"])]
  args = tpu_pod.parse_args(["status", *COMMON])
  assert lines[4:] == [ssh_line(tpu_pod.status_script(args))]
  assert lines[4].count("--command=") == 1 and len(lines) == 5


def test_stop_dry_run():
  (line,), _ = dry_run(["stop", *COMMON, "--stop_grace", "300", "--session", "b16"])
  expected = ('log="$HOME"/tvts_logs/b16.$(hostname).log; pid="$HOME"/tvts_logs/b16.$(hostname).pid; '
              + tpu_pod.state_functions() + tpu_pod.stop_functions("b16", 300) + "tvts_stop")
  assert line == ssh_line(expected)
  assert 'kill -TERM "-$g"' in expected and 'kill -KILL "-$g"' in expected
  assert "tvts_wait 1500 tvts_alive" in expected and "rm -f /tmp/libtpu_lockfile" in expected


# ---------------------------------------------------------------------------------------------------
# relaunch
# ---------------------------------------------------------------------------------------------------
def _kinds(lines):
  """Each printed command reduced to what it is."""
  out = []
  for line in lines:
    if line.startswith("#"):
      continue
    argv = shlex.split(line)
    if argv[:4] == GC[:4] or argv[:4] == QR:
      out.append(" ".join(argv[3:5]))
      if argv[4] == "ssh":
        cmd = remote(argv)
        out[-1] += " setup" if cmd.startswith("set -eu;") else " run" if "tmux new-session" in cmd else ""
    else:
      out.append(" ".join(argv[:3]))
  return out


def test_relaunch_order_and_same_workdir(tmp_path):
  repo = git_repo(tmp_path / "repo")
  lines, _ = dry_run(["relaunch", *COMMON, "--accelerator_type", "v5p-256", "--spot", "--local_dir", str(repo),
                      "--", *TRAIN], env={"TMPDIR": str(tmp_path / "localtmp")})
  assert _kinds(lines) == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp",
                           "tpu-vm ssh setup", "tpu-vm ssh run"]
  assert lines[:5] == [
      "# go on only if the TPU VM is PREEMPTED or TERMINATED or gone (or --force)",
      shlex.join(GC + ["describe", "pod", *LOC, "--format=value(state)"]),
      "# may fail when it is already gone",
      shlex.join(GC + ["delete", "pod", *LOC, "--quiet"]),
      shlex.join(GC + ["create", "pod", *LOC, "--accelerator-type=v5p-256", "--version=v2-alpha-tpuv5", "--spot"])]
  # The same run `run` would start, with the same gs:// workdir (the trainer resumes from its newest checkpoint).
  run_lines, _ = dry_run(["run", *COMMON, "--", *TRAIN])
  assert lines[-1] == run_lines[-1] and "--workdir gs://bucket/run1" in remote(lines[-1])

  queued, _ = dry_run(["relaunch", *COMMON, "--accelerator_type", "v5p-256", "--spot", "--queued",
                       "--source", "git", "--repo_url", "https://example.com/tvts.git", "--", *TRAIN])
  assert _kinds(queued) == ["queued-resources describe", "queued-resources delete", "queued-resources create",
                            "queued-resources describe", "tpu-vm ssh setup", "tpu-vm ssh run"]
  assert queued[3] == shlex.join(QR + ["delete", "pod", *LOC, "--force", "--quiet"])


def test_relaunch_needs_a_gs_workdir():
  for command in (["python", "-m", "tvts.train", "--workdir", "/tmp/run"], ["python", "-m", "tvts.train"]):
    with pytest.raises(SystemExit, match="--workdir must be a gs:// path"):
      tpu_pod.build_steps(["relaunch", *COMMON, "--accelerator_type", "v5p-8", "--source", "git",
                           "--repo_url", "u", "--", *command])
  assert tpu_pod.find_workdir(["python x.py --workdir=gs://b/r && echo done"]) == "gs://b/r"


def _relaunch_steps(*flags):
  return tpu_pod.build_steps(["relaunch", *COMMON, "--accelerator_type", "v5p-256", "--source", "git",
                              "--repo_url", "u", *flags, "--", *TRAIN])


@pytest.mark.parametrize("flags, describe, expected_code, ran", [
    ([], [(0, "PREEMPTED")], 0, ["describe", "delete", "create", "ssh", "ssh"]),
    ([], [(1, "")], 0, ["describe", "delete", "create", "ssh", "ssh"]),  # Already gone.
    ([], [(0, "READY")], 1, ["describe"]),  # A live VM is not deleted ...
    (["--force"], [(0, "READY")], 0, ["describe", "delete", "create", "ssh", "ssh"]),  # ... unless told.
    (["--queued"], [(0, "SUSPENDED"), (0, "WAITING_FOR_RESOURCES"), (0, "PROVISIONING"), (0, "ACTIVE")], 0,
     ["describe", "delete", "create", "describe", "describe", "describe", "ssh", "ssh"]),
    (["--queued"], [(0, "FAILED"), (0, "FAILED")], 1, ["describe", "delete", "create", "describe"]),
])
def test_relaunch_execution(flags, describe, expected_code, ran, capsys):
  """execute() with fake gcloud: state probes gate the launch; the queue is polled until ACTIVE."""
  calls, answers, sleeps = [], list(describe), []

  def call(argv):
    calls.append(argv[4])
    return 1 if argv[4] == "delete" else 0  # Deleting may fail; relaunch goes on.

  def run(argv, **kw):
    calls.append(argv[4])
    code, out = answers.pop(0)
    return subprocess.CompletedProcess(argv, code, out + "\n", "NOT_FOUND" if code else "")
  code = tpu_pod.execute(_relaunch_steps(*flags), call=call, run=run, sleep=sleeps.append)
  assert (code, calls) == (expected_code, ran)
  assert sleeps == [60.0] * max(0, ran.count("describe") - 2)
  if expected_code:
    err = capsys.readouterr().err
    assert ("is READY, not PREEMPTED or TERMINATED" in err) if "--queued" not in flags else ("is FAILED" in err)


def test_status_execution_skips_workers_unless_ready(capsys):
  steps = tpu_pod.build_steps(["status", *COMMON])
  calls = []
  code = tpu_pod.execute(steps, call=lambda a: calls.append(a[4]) or 0,
                         run=lambda a, **k: subprocess.CompletedProcess(a, 0, "PREEMPTED\n", ""))
  assert code == 0 and calls == []
  assert "pod is PREEMPTED: the workers cannot be asked (Spot VMs cannot be restarted: use relaunch)" in (
      capsys.readouterr().out)
  code = tpu_pod.execute(steps, call=lambda a: calls.append(a[4]) or 0,
                         run=lambda a, **k: subprocess.CompletedProcess(a, 0, "READY\n", ""))
  assert code == 0 and calls == ["ssh"]


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux not installed")
def test_run_in_tmux_then_stop(worker, tmp_path):
  """The default mode: the job runs in a tmux session (own tmux server here); stop ends both."""
  worker.env["TMUX_TMPDIR"] = str(tmp_path)  # A private tmux server, never the machine's own.
  args = worker.args(command=("bash", "-c", "echo in-tmux; sleep 30"))
  assert args.mode == "tmux"
  try:
    proc = worker.sh(worker.script("start", args))
    assert proc.returncode == 0, proc.stderr
    worker.wait_for(lambda: worker.log.exists() and "in-tmux" in worker.log.read_text(), "the run")
    group = int(worker.pid.read_text())
    assert worker.sh(f"tmux has-session -t {worker.session}").returncode == 0
    proc = worker.sh(worker.script("stop", args))
    assert proc.returncode == 0 and "SIGKILL" not in proc.stdout, proc.stderr
    assert not worker.group_alive(group) and not worker.pid.exists()
    assert worker.sh(f"tmux has-session -t {worker.session}").returncode != 0
    assert "[tvts] exit code 143" in worker.log.read_text()
  finally:
    worker.sh("tmux kill-server 2>/dev/null")
