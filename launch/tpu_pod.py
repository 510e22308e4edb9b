#!/usr/bin/env python3
"""Cloud TPU VM pod launcher: printable wrappers around `gcloud compute tpus tpu-vm` / `queued-resources`.

    export TVTS_TPU_NAME=tvts-pod TVTS_TPU_ZONE=us-east5-a TVTS_TPU_PROJECT=my-project
    python launch/tpu_pod.py create --accelerator_type v5p-256 --spot \
        --scopes https://www.googleapis.com/auth/cloud-platform      # --queued: through the queue
    python launch/tpu_pod.py setup                  # ship this checkout, uv Python 3.11 venv, pip install -e
    python launch/tpu_pod.py run --forward_env WANDB_API_KEY -- \
        python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/run1
    python launch/tpu_pod.py status                 # VM state and, per worker, the run's state
    python launch/tpu_pod.py logs --worker 0 --follow
    python launch/tpu_pod.py stop                   # SIGTERM, wait --stop_grace s, SIGKILL, clear the libtpu lock
    python launch/tpu_pod.py relaunch --accelerator_type v5p-256 --spot -- \
        python -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/run1
    python launch/tpu_pod.py ssh --worker 3
    python launch/tpu_pod.py delete --yes

Every subcommand accepts --dry_run (before any '--'): it prints the commands, one per line and
shell-quoted, with '#' lines for work the launcher does itself, and runs nothing. `run` starts the
same command on every worker at once; JAX finds the other workers itself on a TPU VM. Secrets given
with --forward_env travel in a mode-0600 file, never on a command line. See docs/pod.md.
Standard library only, so it runs without the project installed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
GCLOUD_QR = ["gcloud", "compute", "tpus", "queued-resources"]

# Default TPU VM software (runtime) version per accelerator generation; override with --version.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
DEFAULT_JAX_TPU = "jax[tpu]>=0.10,<0.11"
DEFAULT_PYTHON = "3.11"  # setup.py: python_requires=">=3.11"; the TPU VM images ship 3.10.
UV_INSTALLER = "https://astral.sh/uv/install.sh"
LIBTPU_LOCK = "/tmp/libtpu_lockfile"
# Device files a process holding the TPU has open (v4: /dev/accel*, v5e/v5p/v6e: /dev/vfio/N).
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
REMOTE_TARBALL = "tvts-src.tar.gz"  # In the workers' $HOME while it is unpacked.

# relaunch recreates without --force only from states where nothing is running any more.
VM_DEAD_STATES = ("PREEMPTED", "TERMINATED")
QR_DEAD_STATES = ("SUSPENDED", "FAILED")

ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


def default_runtime_version(accelerator_type: str) -> str:
  generation = accelerator_type.rsplit("-", 1)[0]
  if generation not in RUNTIME_VERSIONS:
    raise SystemExit(f"No default runtime version for accelerator type {accelerator_type!r}: pass "
                     f"--version (known generations: {', '.join(RUNTIME_VERSIONS)}).")
  return RUNTIME_VERSIONS[generation]


# ---------------------------------------------------------------------------------------------------
# What a subcommand does: a list of steps
# ---------------------------------------------------------------------------------------------------
class Verdict:
  """A probe's reading of a command's output: go on, stop the launch (with a code), or ask again."""

  def __init__(self, action: str, code: int = 0, message: str = ""):
    assert action in ("go", "stop", "again"), action
    self.action, self.code, self.message = action, code, message


class Step:
  """One thing the launcher does, in order.

  argv: a command to run. local: work the launcher does itself (packing, writing the env file); the
  dry run shows its note as a '#' line. probe: the command's output decides whether to go on (state
  checks); with poll_seconds it is repeated while the probe says "again". may_fail: a failure does
  not stop the launch (deleting a VM that is already gone). temp: a local file the step makes,
  removed when the launch ends.
  """

  # A plain class, not a dataclass: tests load this file with importlib without registering it in
  # sys.modules, which dataclasses need to resolve postponed annotations.
  def __init__(self, argv: list[str] | None = None, note: str = "",
               local: Callable[[], object] | None = None,
               probe: Callable[[int, str], Verdict] | None = None, poll_seconds: float = 0.0,
               may_fail: bool = False, temp: str | None = None):
    self.argv, self.note, self.local, self.probe = argv, note, local, probe
    self.poll_seconds, self.may_fail, self.temp = poll_seconds, may_fail, temp

  def render(self) -> list[str]:
    """Dry-run lines: '# note' then the shell-quoted command."""
    lines = [f"# {self.note}"] if self.note else []
    if self.argv is not None:
      lines.append(shlex.join(self.argv))
    return lines


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------
def check_env_key(key: str, flag: str) -> str:
  if not ENV_KEY.fullmatch(key):
    raise SystemExit(f"{flag}: {key!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
  return key


def parse_env_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--env expects KEY=VALUE, got {pair!r}")
    out.append((check_env_key(key, "--env"), value))
  return out


def forwarded_env(keys: Sequence[str], environ: dict[str, str] | None = None) -> dict[str, str]:
  """The local values of --forward_env variables (checked now, so a dry run reports a missing one)."""
  environ = os.environ if environ is None else environ
  values = {}
  for key in keys:
    check_env_key(key, "--forward_env")
    if key not in environ:
      raise SystemExit(f"--forward_env {key}: not set in the local environment")
    values[key] = environ[key]
  return values


def parse_labels(labels: Sequence[str], single: Sequence[str]) -> str:
  """--labels k1=v1,k2=v2 (and repeated --label k=v) -> one 'k1=v1,k2=v2' for gcloud's --labels."""
  items = [item for group in labels for item in group.split(",") if item] + list(single)
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
      raise SystemExit(f"--labels: {item!r} is not KEY=VALUE with a lowercase key starting with a "
                       "letter and [a-z0-9_-] characters (at most 63)")
  return ",".join(items)


def check_python_version(version: str) -> str:
  m = re.fullmatch(r"3\.(\d+)", version)
  if not m or int(m.group(1)) < 11:
    raise SystemExit(f"--python {version!r}: give a version like 3.11 or 3.12 (the project needs >= 3.11)")
  return version


def find_workdir(command: Sequence[str]) -> str | None:
  """The value of --workdir in the remote command (one shell-string argument is split first)."""
  words = shlex.split(command[0]) if len(command) == 1 else list(command)
  for i, word in enumerate(words):
    if word.startswith("--workdir="):
      return word.split("=", 1)[1]
    if word == "--workdir" and i + 1 < len(words):
      return words[i + 1]
  return None


# ---------------------------------------------------------------------------------------------------
# gcloud argument lists
# ---------------------------------------------------------------------------------------------------
def _location(args) -> list[str]:
  flags = [f"--zone={args.zone}"]
  if args.project:
    flags.append(f"--project={args.project}")
  return flags


def _ssh(args, remote_command: str | None, worker: str) -> list[str]:
  cmd = GCLOUD_TPU + ["ssh", args.name, *_location(args), f"--worker={worker}"]
  if args.internal_ip:
    cmd.append("--internal-ip")
  if remote_command is not None:
    cmd.append(f"--command={remote_command}")
  return cmd


def _scp(args, local_path: str, remote_path: str, worker: str = "all") -> list[str]:
  cmd = GCLOUD_TPU + ["scp", local_path, f"{args.name}:{remote_path}", *_location(args),
                      f"--worker={worker}"]
  if args.internal_ip:
    cmd.append("--internal-ip")
  return cmd


def _describe_vm(args) -> list[str]:
  return GCLOUD_TPU + ["describe", args.name, *_location(args), "--format=value(state)"]


def _describe_qr(args) -> list[str]:
  return GCLOUD_QR + ["describe", args.name, *_location(args), "--format=value(state.state)"]


# ---------------------------------------------------------------------------------------------------
# Local work: the files to ship, the launcher's private directory, the secrets file
# ---------------------------------------------------------------------------------------------------
def shipped_files(local_dir: str | Path) -> list[str]:
  """What git tracks plus untracked files that .gitignore does not exclude, relative to local_dir.

  Tracked files deleted from the working tree are left out (tar would fail on them).
  """
  cmd = ["git", "-C", str(local_dir), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
  try:
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
  except FileNotFoundError:
    raise SystemExit("setup --source copy needs git on this machine (to honour .gitignore)") from None
  except subprocess.CalledProcessError as e:
    raise SystemExit(f"--local_dir {local_dir}: not a git checkout ({e.stderr.decode().strip()}); "
                     "use --source git, or run from a clone") from None
  names = dict.fromkeys(n for n in out.decode("utf-8", "surrogateescape").split("\0") if n)
  return sorted(n for n in names if os.path.lexists(os.path.join(local_dir, n)))


def pack(local_dir: str | Path, files: Sequence[str], tarball: str | Path) -> None:
  """A gzipped tar of exactly `files` (no owner names: the workers' user owns what they unpack)."""
  def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
  with tarfile.open(tarball, "w:gz") as tar:
    for name in files:
      tar.add(os.path.join(local_dir, name), arcname=name, recursive=False, filter=anonymous)


def private_dir_path() -> Path:
  return Path(tempfile.gettempdir()) / f"tvts-pod-{os.getuid()}"


def make_private_dir() -> Path:
  """A directory only this user can read, for the tarball and the secrets file."""
  path = private_dir_path()
  path.mkdir(mode=0o700, exist_ok=True)
  st = path.lstat()
  if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
    raise SystemExit(f"{path} must be a directory owned by you with mode 0700; remove it and retry")
  return path


def write_env_file(path: str | Path, values: dict[str, str]) -> None:
  """`export KEY='value'` lines in a file created with mode 0600 (sourced on the workers)."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
  with os.fdopen(fd, "w") as f:
    os.fchmod(f.fileno(), 0o600)  # An older file of the same name may have had a wider mode.
    for key, value in values.items():
      f.write(f"export {key}={shlex.quote(value)}\n")


# ---------------------------------------------------------------------------------------------------
# Remote shell. Every script is one line of shell (bash on the TPU VM images) passed as the ssh
# --command, so nothing needs installing on the workers first and tests can run it locally. Double
# quotes are preferred inside: single quotes come out as '"'"' once the line is quoted for printing.
# ---------------------------------------------------------------------------------------------------
def _remote_path(path: str) -> str:
  """Shell form of a remote path; '~/x' and relative paths are relative to the remote $HOME."""
  if path.startswith("~/"):
    path = path[2:]
  return shlex.quote(path) if path.startswith("/") else '"$HOME"/' + shlex.quote(path)


def _dq(word: str) -> str:
  """Quote for the shell in double quotes when that is safe, else as shlex does."""
  if re.fullmatch(r"[\w@%+=:,./-]+", word):
    return word
  if re.fullmatch(r'[^"$`\\!]*', word):
    return f'"{word}"'
  return shlex.quote(word)


def _shell_command(command: Sequence[str]) -> str:
  """One argument is taken as a shell string (pipes, &&); several are quoted word by word."""
  return command[0] if len(command) == 1 else " ".join(_dq(word) for word in command)


def _log_file(args) -> str:
  """Per-worker log (each worker writes its own disk; the hostname tells the copies apart)."""
  return f"{_remote_path(args.log_dir)}/{shlex.quote(args.session)}.$(hostname).log"


def _pid_file(args) -> str:
  """Holds the process-group id of a run while it is running."""
  return f"{_remote_path(args.log_dir)}/{shlex.quote(args.session)}.$(hostname).pid"


def _env_file(args) -> str:
  """Where --forward_env values land on a worker, relative to $HOME; the run sources, then deletes it."""
  return f".tvts-{args.session}.env"


def _vars(args) -> str:
  return f"log={_log_file(args)}; pid={_pid_file(args)}; "


def state_functions(device_globs: Sequence[str] = TPU_DEVICE_GLOBS) -> str:
  """tvts_alive PGID: the group has a live member (zombies do not count: they hold nothing, and a
  container's init may never reap them). tvts_live: the pid file names a live group.
  tvts_holders: this user's processes with a TPU device file open."""
  names = " -o ".join(f"-lname {_dq(g)}" for g in device_globs)
  return ('tvts_alive() { ps -eo pgid=,stat= | grep -q "^ *$1 [^Z]"; }; '
          'tvts_live() { [ -s "$pid" ] && tvts_alive "$(cat "$pid")"; }; '
          f"tvts_holders() {{ find /proc/[0-9]*/fd -maxdepth 1 \\( {names} \\) 2>/dev/null "
          '| cut -d/ -f3 | sort -un | tr "\\n" " "; }; ')


def stop_functions(session: str, grace: int, lock_file: str = LIBTPU_LOCK) -> str:
  """tvts_stop: SIGTERM the run's process group (the trainer checkpoints and exits), wait up to
  `grace` s, SIGKILL what is left; the same for leftover processes holding the TPU; then remove the
  pid file, the tmux session and the libtpu lock file, which a killed process leaves behind and which
  makes the next run fail with "TPU is already in use". With nothing running it only clears stale
  state. Needs state_functions. (`kill -SIG "-PGID"` has no `--`: dash's kill rejects it.)"""
  lock = _dq(lock_file)
  ticks = 5 * grace  # tvts_wait polls every 0.2 s.
  return (
      'tvts_any_alive() { for p in $1; do ps -o stat= -p "$p" 2>/dev/null | grep -q "^[^Z]" && return 0; '
      "done; return 1; }; "
      'tvts_wait() { n=$1; shift; t=0; while "$@" && [ "$t" -lt "$n" ]; do sleep 0.2; t=$((t + 1)); done; }; '
      "tvts_stop() { h=$(hostname); "
      'if tvts_live; then g=$(cat "$pid"); echo "[tvts] $h: SIGTERM to process group $g"; '
      f'kill -TERM "-$g" 2>/dev/null; tvts_wait {ticks} tvts_alive "$g"; '
      f'if tvts_alive "$g"; then echo "[tvts] $h: still running after {grace} s: SIGKILL"; '
      'kill -KILL "-$g" 2>/dev/null; '
      f'echo "[tvts] killed by stop after {grace} s ($(date -u +%FT%TZ))" >> "$log"; '
      'tvts_wait 50 tvts_alive "$g"; fi; '
      'if tvts_alive "$g"; then echo "[tvts] $h: process group $g survives SIGKILL" >&2; return 1; fi; '
      "fi; "
      'rm -f "$pid"; '
      f"tmux kill-session -t {_dq(session)} 2>/dev/null; "
      'l=$(tvts_holders); if [ -n "$l" ]; then '
      'echo "[tvts] $h: processes ${l}still hold the TPU: SIGTERM"; kill -TERM $l 2>/dev/null; '
      f'tvts_wait {ticks} tvts_any_alive "$l"; '
      'if tvts_any_alive "$l"; then echo "[tvts] $h: SIGKILL to $l"; kill -KILL $l 2>/dev/null; '
      'tvts_wait 50 tvts_any_alive "$l"; fi; '
      'l=$(tvts_holders); if [ -n "$l" ]; then '
      f'echo "[tvts] $h: processes ${{l}}still hold the TPU; {lock_file} kept" >&2; return 1; fi; fi; '
      f'if [ -e {lock} ]; then rm -f {lock} && echo "[tvts] $h: removed {lock_file}"; fi; }}; ')


def log_copy_command(dest: str | None, session: str) -> str:
  """Shell that copies $log to DEST/SESSION.HOST.log (gs:// through gcloud storage); never fails."""
  if not dest:
    return ":"
  target = f"{_dq(dest.rstrip('/'))}/{shlex.quote(session)}.$(hostname).log"
  if dest.startswith("gs://"):
    copy = f'gcloud storage cp "$log" {target} > /dev/null 2>&1'
  else:
    copy = f'mkdir -p {_dq(dest)} && cp "$log" {target}'
  return f'{{ {copy} || echo "[tvts] could not copy this log to {dest}" >> "$log"; }}'


def job_script(args, log_dest: str | None) -> str:
  """What tmux / setsid / the foreground shell runs on each worker.

  The shell traps SIGTERM (with a handler, not by ignoring it, so the command still gets the signal)
  and so outlives `stop`'s SIGTERM: once the command has exited it logs the exit code, copies the
  log to log_dest and removes the pid file. With --log_sync_minutes the log is also copied while
  the run goes on, so most of it outlives a preemption.
  """
  remote, venv = _remote_path(args.remote_dir), _remote_path(args.venv)
  env_file = '"$HOME"/' + shlex.quote(_env_file(args))
  copy = log_copy_command(log_dest, args.session)
  exports = "".join(f"export {k}={_dq(v)} && " for k, v in parse_env_pairs(args.env))
  secrets = f"{{ [ ! -f {env_file} ] || {{ . {env_file} && rm -f {env_file}; }}; }} && "
  body = (f"cd {remote} && . {venv}/bin/activate && {secrets if args.forward_env else ''}"
          f"{exports}{_shell_command(args.command)}")
  if args.mode == "foreground":
    run = f'set -o pipefail; {{ {body}; }} 2>&1 | tee -a "$log"; code=$?; '
  else:
    run = f'{{ {body}; }} >> "$log" 2>&1; code=$?; '
  sync_start = sync_stop = ""
  if log_dest and args.log_sync_minutes > 0:
    sync_start = ('tvts_sync_end() { kill "$s" 2>/dev/null; exit 0; }; '
                  "( trap tvts_sync_end TERM; while :; do "
                  f"sleep {round(args.log_sync_minutes * 60)} & s=$!; wait $s; {copy}; done ) & sync=$!; ")
    sync_stop = 'kill -TERM "$sync" 2>/dev/null; wait "$sync" 2>/dev/null; '
  return (_vars(args)
          + 'tvts_on_term() { echo "[tvts] SIGTERM: waiting for the command to exit ($(date -u +%FT%TZ))" '
            '>> "$log"; }; trap tvts_on_term TERM; '
          + 'ps -o pgid= -p $$ | tr -d " " > "$pid"; '
          + 'echo "[tvts] start on $(hostname) ($(date -u +%FT%TZ))" >> "$log"; '
          + sync_start + run + sync_stop
          + 'echo "[tvts] exit code $code ($(date -u +%FT%TZ))" >> "$log"; '
          + f'{copy}; rm -f "$pid"; exit $code')


def start_script(args, log_dest: str | None, *, lock_file: str = LIBTPU_LOCK,
                 device_globs: Sequence[str] = TPU_DEVICE_GLOBS) -> str:
  """Refuse while a run is live (--replace stops it instead), clear stale state, then start."""
  venv = _remote_path(args.venv)
  env_file = '"$HOME"/' + shlex.quote(_env_file(args))
  refuse = ""
  if not args.replace:
    refuse = (
        f'why=; l=$(tvts_holders); if tvts_live; then why="run {args.session} is live (process group '
        '$(cat "$pid"))"; elif [ -n "$l" ]; then why="processes ${l}hold the TPU"; fi; '
        'if [ -n "$why" ]; then echo "[tvts] $(hostname): not started: $why; stop it first '
        f'(launch/tpu_pod.py stop) or pass --replace" >&2; rm -f {env_file}; exit 3; fi; ')
  check_venv = (f'if [ ! -x {venv}/bin/python ]; then echo "[tvts] $(hostname): no Python environment '
                f'at {args.venv}: run launch/tpu_pod.py setup first" >&2; exit 4; fi; ')
  # Without --forward_env, an env file left by an earlier failed launch must not be picked up.
  drop_stale_env = "" if args.forward_env else f"rm -f {env_file}; "
  job = shlex.quote(job_script(args, log_dest))
  if args.mode == "tmux":
    start = f"tmux new-session -d -s {_dq(args.session)} bash -c {job}"
  elif args.mode == "nohup":  # Its own session, so that `stop` can signal the whole process group.
    start = f"setsid nohup bash -c {job} > /dev/null 2>&1 < /dev/null &"
  else:  # Its own process group too (setsid --wait keeps it in the foreground).
    start = f"setsid --wait bash -c {job}"
  return (f"mkdir -p {_remote_path(args.log_dir)} && {_vars(args)}"
          + state_functions(device_globs) + stop_functions(args.session, args.stop_grace, lock_file)
          + refuse + check_venv + drop_stale_env
          # With nothing live (or --replace) this clears a stale pid file and libtpu lock.
          + "tvts_stop || exit 1; " + start)


def stop_script(args, *, lock_file: str = LIBTPU_LOCK,
                device_globs: Sequence[str] = TPU_DEVICE_GLOBS) -> str:
  return (_vars(args) + state_functions(device_globs)
          + stop_functions(args.session, args.stop_grace, lock_file) + "tvts_stop")


def status_script(args, *, lock_file: str = LIBTPU_LOCK,
                  device_globs: Sequence[str] = TPU_DEVICE_GLOBS) -> str:
  """One line per worker: running or not (with the last exit code), then the log's last line."""
  lock = _dq(lock_file)
  return (
      _vars(args) + state_functions(device_globs)
      + 'if tvts_live; then s="running (process group $(cat "$pid"))"; '
      + 'elif [ -f "$log" ]; then s="not running, last $(grep -a "^.tvts. exit code" "$log" '
      + '| tail -n 1 | cut -c8-)"; else s="no run yet"; fi; '
      + 'l=$(tvts_holders); [ -z "$l" ] || s="$s; TPU held by $l"; '
      + f'[ ! -e {lock} ] || tvts_live || s="$s; stale {lock_file}"; '
      + 'echo "$(hostname): $s | $(tail -n 1 "$log" 2>/dev/null | cut -c1-160)"')


def setup_script(args, fetch: str) -> str:
  """Code in place, uv, a Python >= 3.11 venv, then jax[tpu] and the project installed into it."""
  remote, venv, py = _remote_path(args.remote_dir), _remote_path(args.venv), args.python
  find_links = f" --find-links {_dq(args.pip_find_links)}" if args.pip_find_links else ""
  extras = "".join(" " + _dq(p) for p in args.pip_extra)
  is_version = f"import sys; sys.exit(sys.version_info[:2] != ({py.replace('.', ', ')}))"
  return (
      "set -eu; " + _vars(args) + state_functions()
      # Swapping the tree under a live run would change its code mid-run.
      + f'if tvts_live; then echo "[tvts] $(hostname): run {args.session} is live; stop it before '
      + 'setup" >&2; exit 3; fi; '
      + fetch + "; "
      + 'export PATH="$HOME/.local/bin:$PATH"; '
      + f"command -v uv > /dev/null || curl -LsSf {_dq(args.uv_installer)} "
      + '| env UV_INSTALL_DIR="$HOME/.local/bin" UV_NO_MODIFY_PATH=1 sh; '
      + f"uv python install {py}; "
      + f'{venv}/bin/python -c "{is_version}" 2> /dev/null '
      + f"|| {{ rm -rf {venv} && uv venv --seed --python {py} {venv}; }}; "
      + f"uv pip install --python {venv}/bin/python --upgrade{find_links} "
      + f"{_dq(args.jax_tpu)}{extras} -e {remote}; "
      + f'echo "[tvts] $(hostname): $({venv}/bin/python --version) in {args.venv}, tvts from {args.remote_dir}"')


# ---------------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------------
def _create_flags(args) -> list[str]:
  """Flags shared by `tpu-vm create` and `queued-resources create` (after the version flag)."""
  if args.spot and args.reserved:
    raise SystemExit("--spot and --reserved are mutually exclusive")
  flags = []
  if args.spot:
    flags.append("--spot")
  if args.reserved:
    flags.append("--reserved")
  if args.network:
    flags.append(f"--network={args.network}")
  if args.subnetwork:
    flags.append(f"--subnetwork={args.subnetwork}")
  if args.internal_ips:
    flags.append("--internal-ips")
  if args.service_account:
    flags.append(f"--service-account={args.service_account}")
  if args.scopes:
    flags.append(f"--scopes={args.scopes}")
  labels = parse_labels(args.labels, args.label)
  if labels:
    flags.append(f"--labels={labels}")
  return flags


def _wait_for_queue(args) -> Step:
  def until_active(code: int, out: str) -> Verdict:
    state = out.strip()
    if code == 0 and state == "ACTIVE":
      return Verdict("go")
    if code == 0 and state in QR_DEAD_STATES:
      return Verdict("stop", 1, f"queued resource {args.name} is {state}; see `gcloud compute tpus "
                                "queued-resources describe`")
    return Verdict("again")
  return Step(argv=_describe_qr(args), probe=until_active, poll_seconds=args.poll_seconds,
              note=f"poll every {args.poll_seconds:g} s until the queued resource is ACTIVE "
                   f"(stops on {' or '.join(QR_DEAD_STATES)})")


def cmd_create(args) -> list[Step]:
  version = args.version or default_runtime_version(args.accelerator_type)
  if not args.queued:
    return [Step(argv=GCLOUD_TPU + ["create", args.name, *_location(args),
                                    f"--accelerator-type={args.accelerator_type}",
                                    f"--version={version}", *_create_flags(args)])]
  # A queued resource waits for capacity instead of failing at once when there is none.
  cmd = GCLOUD_QR + ["create", args.name, *_location(args), f"--node-id={args.name}",
                     f"--accelerator-type={args.accelerator_type}", f"--runtime-version={version}",
                     *_create_flags(args)]
  if args.valid_until_duration:
    cmd.append(f"--valid-until-duration={args.valid_until_duration}")
  steps = [Step(argv=cmd)]
  if args.wait:
    steps.append(_wait_for_queue(args))
  return steps


def cmd_setup(args) -> list[Step]:
  check_python_version(args.python)
  remote = _remote_path(args.remote_dir)
  steps: list[Step] = []
  if args.source == "copy":
    files = shipped_files(args.local_dir)
    tarball = str(private_dir_path() / f"tvts-src-{args.name}.tar.gz")
    steps.append(Step(
        note=f"pack {len(files)} files of {args.local_dir} (git ls-files --cached --others "
             f"--exclude-standard) into {tarball}",
        local=lambda: (make_private_dir(), pack(args.local_dir, files, tarball)), temp=tarball))
    if args.stage:
      # One upload; each of the 32-64 workers then pulls from Cloud Storage, not from this machine.
      staged = f"{args.stage.rstrip('/')}/tvts-src-{args.name}.tar.gz"
      steps.append(Step(argv=["gcloud", "storage", "cp", tarball, staged]))
      get = f'gcloud storage cp {shlex.quote(staged)} "$HOME"/{REMOTE_TARBALL} && '
    else:
      steps.append(Step(argv=_scp(args, tarball, REMOTE_TARBALL)))
      get = ""
    # Unpack beside the old tree and swap, so files deleted locally do not linger on the workers.
    new, old = f"{remote}.new", f"{remote}.old"
    fetch = (f"{get}rm -rf {new} && mkdir -p {new} && tar -xzf \"$HOME\"/{REMOTE_TARBALL} -C {new} && "
             f"rm -f \"$HOME\"/{REMOTE_TARBALL} && rm -rf {old} && "
             f"{{ [ ! -e {remote} ] || mv {remote} {old}; }} && mv {new} {remote} && rm -rf {old}")
  else:
    if not args.repo_url:
      raise SystemExit("--source git needs --repo_url")
    fetch = (f"{{ [ -d {remote}/.git ] || git clone {shlex.quote(args.repo_url)} {remote}; }} && "
             f"git -C {remote} fetch --tags origin {shlex.quote(args.ref)} && "
             f"git -C {remote} checkout --detach FETCH_HEAD")
  steps.append(Step(argv=_ssh(args, setup_script(args, fetch), "all")))
  return steps


def _log_dest(args) -> str | None:
  if args.copy_logs_to == "none":
    return None
  if args.copy_logs_to != "auto":
    return args.copy_logs_to
  workdir = find_workdir(args.command)
  return f"{workdir.rstrip('/')}/pod_logs" if workdir else None


def cmd_run(args) -> list[Step]:
  if not args.command:
    raise SystemExit("run: missing command; put it after '--'")
  parse_env_pairs(args.env)
  secrets = forwarded_env(args.forward_env)
  workdir = find_workdir(args.command)
  if workdir is not None and not workdir.startswith("gs://"):
    print(f"warning: --workdir {workdir} is on each worker's own disk: checkpoints are not shared "
          "and are lost with the VM; use a gs:// path", file=sys.stderr)
  steps: list[Step] = []
  if secrets:
    local_env = str(private_dir_path() / f"{args.name}.{args.session}.env")

    def write() -> None:
      make_private_dir()
      write_env_file(local_env, forwarded_env(args.forward_env))
    steps.append(Step(note=f"write {', '.join(secrets)} (values not shown) to {local_env} (mode 0600)",
                      local=write, temp=local_env))
    steps.append(Step(argv=_scp(args, local_env, _env_file(args))))
  steps.append(Step(argv=_ssh(args, start_script(args, _log_dest(args)), "all")))
  return steps


def cmd_logs(args) -> list[Step]:
  tail = f"tail -n {args.lines}" + (" -F" if args.follow else "")
  return [Step(argv=_ssh(args, f"{tail} {_log_file(args)}", args.worker))]


def cmd_stop(args) -> list[Step]:
  return [Step(argv=_ssh(args, stop_script(args), "all"))]


def cmd_status(args) -> list[Step]:
  steps = []
  if args.queued:
    steps.append(Step(argv=_describe_qr(args), probe=lambda code, out: Verdict("go"),
                      note="the queued resource's state"))

  def only_when_ready(code: int, out: str) -> Verdict:
    state = out.strip() if code == 0 else "not found"
    if state == "READY":
      return Verdict("go")
    hint = " (Spot VMs cannot be restarted: use relaunch)" if state in VM_DEAD_STATES else ""
    return Verdict("stop", 0, f"{args.name} is {state}: the workers cannot be asked{hint}")
  steps.append(Step(argv=_describe_vm(args), probe=only_when_ready,
                    note="the VM's state; the workers are asked only when it is READY"))
  steps.append(Step(argv=_ssh(args, status_script(args), "all")))
  return steps


def cmd_ssh(args) -> list[Step]:
  return [Step(argv=_ssh(args, _shell_command(args.command) if args.command else None, args.worker))]


def _delete(args, quiet: bool, async_: bool) -> list[str]:
  if args.queued:  # --force also deletes the queued resource's node.
    cmd = GCLOUD_QR + ["delete", args.name, *_location(args), "--force"]
  else:
    cmd = GCLOUD_TPU + ["delete", args.name, *_location(args)]
  if quiet:
    cmd.append("--quiet")
  if async_:
    cmd.append("--async")
  return cmd


def cmd_delete(args) -> list[Step]:
  return [Step(argv=_delete(args, args.yes, args.async_))]


def cmd_relaunch(args) -> list[Step]:
  """After a preemption: delete, create (or queue), setup, run with the same gs:// workdir."""
  if not args.command:
    raise SystemExit("relaunch: missing command; put the run's command after '--'")
  workdir = find_workdir(args.command)
  if not workdir or not workdir.startswith("gs://"):
    raise SystemExit(f"relaunch: the command's --workdir must be a gs:// path (got {workdir!r}): "
                     "the run resumes from the newest checkpoint there, and a worker's disk goes "
                     "with the VM")
  dead = QR_DEAD_STATES if args.queued else VM_DEAD_STATES
  kind = "queued resource" if args.queued else "TPU VM"

  def only_when_dead(code: int, out: str) -> Verdict:
    state = out.strip()
    if code != 0 or state in dead or args.force:
      return Verdict("go")
    return Verdict("stop", 1, f"{kind} {args.name} is {state}, not {' or '.join(dead)}: relaunch "
                              "would delete it; use `run --replace` to restart the run, or "
                              "relaunch --force")
  probe = Step(argv=_describe_qr(args) if args.queued else _describe_vm(args), probe=only_when_dead,
               note=f"go on only if the {kind} is {' or '.join(dead)} or gone (or --force)")
  delete = Step(argv=_delete(args, quiet=True, async_=False), may_fail=True,
                note="may fail when it is already gone")
  args.wait = True
  return [probe, delete, *cmd_create(args), *cmd_setup(args), *cmd_run(args)]


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def _parents() -> dict[str, argparse.ArgumentParser]:
  p = {name: argparse.ArgumentParser(add_help=False)
       for name in ("common", "layout", "session", "queue", "create", "setup", "run")}
  g = p["common"].add_argument_group("common flags")
  g.add_argument("--name", default=os.environ.get("TVTS_TPU_NAME"),
                 help="TPU VM name; default from $TVTS_TPU_NAME.")
  g.add_argument("--zone", default=os.environ.get("TVTS_TPU_ZONE"),
                 help="Zone, e.g. us-east5-a; default from $TVTS_TPU_ZONE.")
  g.add_argument("--project", default=os.environ.get("TVTS_TPU_PROJECT"),
                 help="GCP project; default from $TVTS_TPU_PROJECT, else gcloud's configured project.")
  g.add_argument("--internal_ip", action="store_true",
                 help="ssh/scp over internal IPs (when launching from a VM in the same VPC).")
  g.add_argument("--dry_run", action="store_true",
                 help="Print the commands instead of running them (put it before any '--').")

  g = p["layout"].add_argument_group("worker layout")
  g.add_argument("--remote_dir", default="tvts", help="Project directory on the workers, relative to $HOME.")
  g.add_argument("--venv", default="tvts-venv",
                 help="Python environment on the workers (made by setup, used by run), relative to $HOME.")

  g = p["session"].add_argument_group("run identity")
  g.add_argument("--session", default="tvts", help="Run name: tmux session, log and pid file stem.")
  g.add_argument("--log_dir", default="tvts_logs",
                 help="Log directory on each worker, relative to $HOME; files SESSION.$(hostname).log/.pid.")
  g.add_argument("--stop_grace", type=int, default=120,
                 help="Seconds between SIGTERM (the trainer checkpoints and exits) and SIGKILL.")

  g = p["queue"].add_argument_group("queued resources")
  g.add_argument("--queued", action="store_true",
                 help="Go through a queued resource named --name (waits for capacity instead of "
                      "failing at once).")
  g.add_argument("--poll_seconds", type=float, default=60.0,
                 help="How often to check a queued resource while waiting for it.")

  g = p["create"].add_argument_group("create")
  g.add_argument("--accelerator_type", required=True, help="e.g. v5p-256, v4-512, v5litepod-256, v6e-256.")
  g.add_argument("--version", default=None,
                 help="TPU runtime version; default by generation: "
                      + ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items()))
  g.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper).")
  g.add_argument("--reserved", action="store_true", help="Use the project's reservation.")
  g.add_argument("--network", default=None, help="VPC network (gcloud default: 'default').")
  g.add_argument("--subnetwork", default=None, help="VPC subnetwork.")
  g.add_argument("--internal_ips", action="store_true", help="Workers get no external IPs.")
  g.add_argument("--service_account", default=None,
                 help="Service account of the workers (needs write access to the gs:// workdir).")
  g.add_argument("--scopes", default=None,
                 help="Comma-separated OAuth scopes, e.g. https://www.googleapis.com/auth/cloud-platform.")
  g.add_argument("--labels", action="append", default=[], metavar="K1=V1,K2=V2",
                 help="Resource labels, comma-separated (repeatable); sent as one --labels.")
  g.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                 help="One resource label (repeatable); merged into --labels.")
  g.add_argument("--valid_until_duration", default=None,
                 help="--queued: give up on the request after this long, e.g. 6h.")

  g = p["setup"].add_argument_group("setup")
  g.add_argument("--source", choices=["copy", "git"], default="copy",
                 help="copy: ship this checkout's git-tracked and unignored files; git: clone/fetch --ref.")
  g.add_argument("--local_dir", default=str(PROJECT_ROOT), help="Checkout to copy (--source copy).")
  g.add_argument("--stage", default=None, metavar="GS_PREFIX",
                 help="--source copy: upload the tarball once to this gs:// prefix; workers pull it.")
  g.add_argument("--repo_url", default=None, help="Repository to clone (--source git).")
  g.add_argument("--ref", default="main", help="Branch, tag or commit to check out (--source git).")
  g.add_argument("--python", default=DEFAULT_PYTHON,
                 help="Python version that uv installs and makes --venv with (>= 3.11).")
  g.add_argument("--uv_installer", default=UV_INSTALLER,
                 help="uv install script, used when uv is not on the workers yet.")
  g.add_argument("--jax_tpu", default=DEFAULT_JAX_TPU, help="Requirement for JAX with TPU support.")
  g.add_argument("--pip_find_links", default=None, help="Extra --find-links location (e.g. libtpu releases).")
  g.add_argument("--pip_extra", action="append", default=[], metavar="REQUIREMENT",
                 help="Additional requirement to install (repeatable).")

  g = p["run"].add_argument_group("run")
  g.add_argument("--mode", choices=["tmux", "nohup", "foreground"], default="tmux",
                 help="tmux/nohup: detached, survives disconnects, output to a log file per worker; "
                      "foreground: stream all workers' output here.")
  g.add_argument("--replace", "--kill_existing", dest="replace", action="store_true",
                 help="Stop a live run of the same --session first (default: refuse to start).")
  g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="Variable for the command (repeatable). Visible in process lists: not for secrets.")
  g.add_argument("--forward_env", action="append", default=[], metavar="KEY",
                 help="Send this variable's local value to the workers in a mode-0600 file that the "
                      "run sources and deletes (repeatable). For secrets.")
  g.add_argument("--copy_logs_to", default="auto",
                 help="Where each worker copies its log when the run exits: auto = the command's "
                      "--workdir + /pod_logs; none; or a path / gs:// prefix.")
  g.add_argument("--log_sync_minutes", type=float, default=10.0,
                 help="Also copy the log this often while running (0: only at exit).")
  return p


def build_parser() -> argparse.ArgumentParser:
  fmt = argparse.ArgumentDefaultsHelpFormatter
  p = _parents()
  parser = argparse.ArgumentParser(
      prog="launch/tpu_pod.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description=__doc__.split("\n\n")[0], epilog="Run `launch/tpu_pod.py SUBCOMMAND -h` for flags.")
  sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

  def add(name: str, parents: list[str], build, help: str, usage: str | None = None):
    sp = sub.add_parser(name, parents=[p[x] for x in parents], formatter_class=fmt, help=help,
                        usage=usage, allow_abbrev=False)
    sp.set_defaults(build=build)
    return sp

  s = add("create", ["common", "create", "queue"], cmd_create,
          "Create a TPU VM (pod slice), or queue a request for one (--queued).")
  s.add_argument("--wait", action="store_true", help="--queued: wait until the request is ACTIVE.")
  add("setup", ["common", "layout", "session", "setup"], cmd_setup,
      "Ship the code to every worker and install Python, jax[tpu] and the project into --venv.")
  add("run", ["common", "layout", "session", "run"], cmd_run,
      "Run a command on all workers at once (tmux / nohup / foreground).",
      "%(prog)s [flags] -- COMMAND [ARGS ...]")
  add("status", ["common", "session", "queue"], cmd_status,
      "The VM's state and, when READY, each worker's run state.")
  s = add("logs", ["common", "session"], cmd_logs, "Tail a worker's log file.")
  s.add_argument("--worker", default="0", help="Worker index (or 'all').")
  s.add_argument("--lines", type=int, default=100, help="Number of lines.")
  s.add_argument("--follow", action="store_true", help="Keep following (tail -F).")
  add("stop", ["common", "session"], cmd_stop,
      "Stop a run on all workers: SIGTERM, wait --stop_grace, SIGKILL, clear the libtpu lock.")
  s = add("ssh", ["common"], cmd_ssh, "Open a shell on a worker, or run COMMAND on it.",
          "%(prog)s [flags] [-- COMMAND ...]")
  s.add_argument("--worker", default="0", help="Worker index (or 'all').")
  s = add("delete", ["common", "queue"], cmd_delete, "Delete the TPU VM (or its queued resource).")
  s.add_argument("--yes", action="store_true", help="Do not ask for confirmation (gcloud --quiet).")
  s.add_argument("--async", dest="async_", action="store_true", help="Return without waiting.")
  s = add("relaunch", ["common", "layout", "session", "create", "queue", "setup", "run"], cmd_relaunch,
          "After a preemption: delete, create (or queue), setup and run again with the same workdir.",
          "%(prog)s [flags] -- COMMAND [ARGS ...]")
  s.add_argument("--force", action="store_true", help="Recreate even when the VM is not preempted.")
  return parser


COMMAND_SUBCOMMANDS = ("run", "ssh", "relaunch")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  if "--" in argv:
    split = argv.index("--")
    argv, command = argv[:split], argv[split + 1:]
  else:
    command = []
  parser = build_parser()
  args = parser.parse_args(argv)
  if command and args.subcommand not in COMMAND_SUBCOMMANDS:
    parser.error(f"{args.subcommand} takes no command after '--'")
  for word in command:
    if word in ("--dry_run", "--dry-run"):
      # It would go to the remote program, and the launch would happen for real.
      parser.error(f"{word} after '--' belongs to the remote command, so nothing would be a dry run; "
                   "put --dry_run before '--' (quote the command as one string to pass it on)")
  args.command = command
  # The session names files, a tmux session and shell words on the workers.
  if hasattr(args, "session") and not re.fullmatch(r"[A-Za-z0-9_-]+", args.session):
    parser.error(f"--session {args.session!r}: use letters, digits, '_' and '-'")
  for flag, var in (("name", "TVTS_TPU_NAME"), ("zone", "TVTS_TPU_ZONE")):
    if not getattr(args, flag):
      parser.error(f"--{flag} is required: pass --{flag} or set ${var}")
  return args


def build_steps(argv: Sequence[str]) -> list[Step]:
  args = parse_args(argv)
  return args.build(args)


def build_commands(argv: Sequence[str]) -> list[list[str]]:
  """The commands that `launch/tpu_pod.py ARGV` runs, in order (local work left out)."""
  return [s.argv for s in build_steps(argv) if s.argv is not None]


def configured_project() -> str:
  """gcloud's own project setting, used when neither --project nor $TVTS_TPU_PROJECT is given."""
  if os.environ.get("CLOUDSDK_CORE_PROJECT"):
    return os.environ["CLOUDSDK_CORE_PROJECT"]
  try:
    out = subprocess.run(["gcloud", "config", "get-value", "project"], capture_output=True, text=True)
  except FileNotFoundError:
    raise SystemExit("gcloud not found: install the Google Cloud CLI") from None
  return out.stdout.strip()


def execute(steps: Sequence[Step], *, sleep: Callable[[float], None] | None = None,
            call: Callable[..., int] | None = None,
            run: Callable[..., subprocess.CompletedProcess] | None = None) -> int:
  """Runs the steps in order; returns the launch's exit code. call/run/sleep: for tests."""
  sleep, call, run = sleep or time.sleep, call or subprocess.call, run or subprocess.run
  for step in steps:
    if step.note:
      print(f"# {step.note}", file=sys.stderr, flush=True)
    if step.local is not None:
      step.local()
    if step.argv is None:
      continue
    print(f"+ {shlex.join(step.argv)}", file=sys.stderr, flush=True)
    if step.probe is None:
      code = call(step.argv)
      if code != 0 and not step.may_fail:
        print(f"command failed with exit code {code}", file=sys.stderr)
        return code
      continue
    while True:
      proc = run(step.argv, capture_output=True, text=True)
      print(proc.stdout.strip() or proc.stderr.strip(), flush=True)
      verdict = step.probe(proc.returncode, proc.stdout)
      if verdict.action != "again" or step.poll_seconds <= 0:
        break
      sleep(step.poll_seconds)
    if verdict.action == "stop":
      print(verdict.message, file=sys.stderr if verdict.code else sys.stdout, flush=True)
      return verdict.code
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  steps = args.build(args)
  if args.dry_run:
    for step in steps:
      for line in step.render():
        print(line, flush=True)
    return 0
  if not args.project and not configured_project():
    raise SystemExit("no project: pass --project, set $TVTS_TPU_PROJECT, or run "
                     "`gcloud config set project PROJECT`")
  try:
    return execute(steps)
  finally:
    # The local tarball and secrets file are not needed once the workers have them.
    for step in steps:
      if step.temp:
        Path(step.temp).unlink(missing_ok=True)


if __name__ == "__main__":
  sys.exit(main())
