#!/usr/bin/env python3
"""Cloud TPU VM pod launcher: thin, printable wrappers around `gcloud compute tpus tpu-vm`.

    python launch/tpu_pod.py create --name tvts-pod --zone us-east5-a --accelerator_type v5p-256 --spot
    python launch/tpu_pod.py setup  --name tvts-pod --zone us-east5-a            # copy this checkout
    python launch/tpu_pod.py setup  --name tvts-pod --zone us-east5-a --source git \
        --repo_url https://github.com/ORG/tvts.git --ref v0.1.0
    python launch/tpu_pod.py run    --name tvts-pod --zone us-east5-a -- \
        python3 -m tvts.train --config configs/pretrain.py:variant=B/16 --workdir gs://BUCKET/run1
    python launch/tpu_pod.py logs   --name tvts-pod --zone us-east5-a --worker 0 --follow
    python launch/tpu_pod.py stop   --name tvts-pod --zone us-east5-a        # kill the tmux session
    python launch/tpu_pod.py ssh    --name tvts-pod --zone us-east5-a --worker 3
    python launch/tpu_pod.py delete --name tvts-pod --zone us-east5-a --yes

Every subcommand accepts --dry_run, which prints the exact commands (one per line, shell-quoted)
instead of running them. `run` starts the same command on every worker at once (--worker=all); on a
TPU VM JAX finds the other workers itself, so no TVTS_* variables are needed:
`tvts.distributed.initialize()` calls `jax.distributed.initialize()` with autodetection.
--name / --zone / --project default to $TVTS_TPU_NAME / $TVTS_TPU_ZONE / $TVTS_TPU_PROJECT.
Standard library only.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]

# Default TPU VM software (runtime) version per accelerator generation; override with --version.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
DEFAULT_JAX_TPU = "jax[tpu]>=0.10,<0.11"
TARBALL_EXCLUDES = (".git", "__pycache__", "*.egg-info", ".pytest_cache", "*.pyc")


def default_runtime_version(accelerator_type: str) -> str:
  generation = accelerator_type.rsplit("-", 1)[0]
  if generation not in RUNTIME_VERSIONS:
    raise SystemExit(f"No default runtime version for accelerator type {accelerator_type!r}: pass "
                     f"--version (known generations: {', '.join(RUNTIME_VERSIONS)}).")
  return RUNTIME_VERSIONS[generation]


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


def _remote_path(path: str) -> str:
  """Shell form of a remote path; '~/x' and relative paths are relative to the remote $HOME."""
  if path.startswith("~/"):
    path = path[2:]
  return shlex.quote(path) if path.startswith("/") else '"$HOME"/' + shlex.quote(path)


def _shell_command(command: list[str]) -> str:
  """One argument is taken as a shell string (pipes, &&); several are quoted word by word."""
  return command[0] if len(command) == 1 else shlex.join(command)


def _env_exports(pairs: list[str], forward: list[str]) -> str:
  exports = []
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise SystemExit(f"--env expects KEY=VALUE, got {pair!r}")
    exports.append(f"export {key}={shlex.quote(value)}")
  for key in forward:
    if key not in os.environ:
      raise SystemExit(f"--forward_env {key}: not set in the local environment")
    exports.append(f"export {key}={shlex.quote(os.environ[key])}")
  return "".join(e + " && " for e in exports)


def cmd_create(args) -> list[list[str]]:
  if args.spot and args.reserved:
    raise SystemExit("--spot and --reserved are mutually exclusive")
  version = args.version or default_runtime_version(args.accelerator_type)
  cmd = GCLOUD_TPU + ["create", args.name, *_location(args), f"--accelerator-type={args.accelerator_type}",
                      f"--version={version}"]
  if args.spot:
    cmd.append("--spot")
  if args.reserved:
    cmd.append("--reserved")
  if args.network:
    cmd.append(f"--network={args.network}")
  if args.subnetwork:
    cmd.append(f"--subnetwork={args.subnetwork}")
  if args.internal_ips:
    cmd.append("--internal-ips")
  for label in args.label:
    cmd.append(f"--labels={label}")
  return [cmd]


def cmd_setup(args) -> list[list[str]]:
  remote = _remote_path(args.remote_dir)
  steps: list[list[str]] = []
  if args.source == "copy":
    # Copy a tarball of the local checkout (no .git, caches), not a recursive scp of many files.
    tarball = os.path.join(tempfile.gettempdir(), f"tvts-src-{args.name}.tar.gz")
    excludes = [f"--exclude={e}" for e in TARBALL_EXCLUDES]
    steps.append(["tar", "-czf", tarball, *excludes, "-C", str(args.local_dir), "."])
    steps.append(_scp(args, tarball, "tvts-src.tar.gz"))
    fetch = (f'mkdir -p {remote} && tar -xzf "$HOME"/tvts-src.tar.gz -C {remote} && '
             'rm "$HOME"/tvts-src.tar.gz')
  else:
    if not args.repo_url:
      raise SystemExit("--source git needs --repo_url")
    fetch = (f"{{ [ -d {remote}/.git ] || git clone {shlex.quote(args.repo_url)} {remote}; }} && "
             f"git -C {remote} fetch --tags origin {shlex.quote(args.ref)} && "
             f"git -C {remote} checkout --detach FETCH_HEAD")
  py = shlex.quote(args.python)
  pip = f"{py} -m pip install --upgrade"
  if args.pip_find_links:
    pip += f" -f {shlex.quote(args.pip_find_links)}"
  extras = "".join(" " + shlex.quote(p) for p in args.pip_extra)
  install = (f"{py} -m pip install --upgrade pip && "
             f"{pip} {shlex.quote(args.jax_tpu)}{extras} -e {remote}")
  steps.append(_ssh(args, f"set -e; {fetch} && {install}", "all"))
  return steps


def _log_file(args) -> str:
  """Per-worker log (each worker writes its own disk; hostname tells the files apart if gathered)."""
  return f'{_remote_path(args.log_dir)}/{shlex.quote(args.session)}.$(hostname).log'


def _pid_file(args) -> str:
  """Holds the process-group id of a detached run while it is running, for `stop`."""
  return f'{_remote_path(args.log_dir)}/{shlex.quote(args.session)}.$(hostname).pid'


def cmd_run(args) -> list[list[str]]:
  if not args.command:
    raise SystemExit("run: missing command; put it after '--'")
  remote = _remote_path(args.remote_dir)
  log = _log_file(args)
  body = (f"cd {remote} && {_env_exports(args.env, args.forward_env)}"
          f"{_shell_command(args.command)}")
  if args.mode == "foreground":
    return [_ssh(args, f"set -o pipefail; mkdir -p {_remote_path(args.log_dir)} && "
                       f"{{ {body}; }} 2>&1 | tee {log}", "all")]
  # Background: the job survives the ssh session; its exit code is appended to the log.
  # `$$` is the job's own shell, a session (and process group) leader under both tmux and setsid.
  pid = _pid_file(args)
  job = (f"echo $$ > {pid}; {{ {body}; }} > {log} 2>&1; echo \"[tvts] exit code $?\" >> {log}; "
         f"rm -f {pid}")
  if args.mode == "tmux":
    start = ""
    if args.kill_existing:
      start = f"tmux kill-session -t {shlex.quote(args.session)} 2>/dev/null; "
    start += f"tmux new-session -d -s {shlex.quote(args.session)} bash -c {shlex.quote(job)}"
  else:  # nohup, in its own session so that `stop` can kill the whole process group.
    start = f"setsid nohup bash -c {shlex.quote(job)} > /dev/null 2>&1 < /dev/null &"
  return [_ssh(args, f"mkdir -p {_remote_path(args.log_dir)} && {start}", "all")]


def cmd_logs(args) -> list[list[str]]:
  tail = f"tail -n {args.lines}" + (" -F" if args.follow else "")
  return [_ssh(args, f"{tail} {_log_file(args)}", args.worker)]


def cmd_stop(args) -> list[list[str]]:
  pid = _pid_file(args)
  return [_ssh(args, f"tmux kill-session -t {shlex.quote(args.session)} 2>/dev/null; "
                     f"if [ -f {pid} ]; then kill -- -$(cat {pid}) 2>/dev/null; rm -f {pid}; fi; true",
               "all")]


def cmd_ssh(args) -> list[list[str]]:
  return [_ssh(args, _shell_command(args.command) if args.command else None, args.worker)]


def cmd_delete(args) -> list[list[str]]:
  cmd = GCLOUD_TPU + ["delete", args.name, *_location(args)]
  if args.yes:
    cmd.append("--quiet")
  if args.async_:
    cmd.append("--async")
  return [cmd]


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
  fmt = argparse.ArgumentDefaultsHelpFormatter
  common = argparse.ArgumentParser(add_help=False)
  g = common.add_argument_group("common flags")
  g.add_argument("--name", default=os.environ.get("TVTS_TPU_NAME"),
                 help="TPU VM name; default from $TVTS_TPU_NAME.")
  g.add_argument("--zone", default=os.environ.get("TVTS_TPU_ZONE"),
                 help="Zone, e.g. us-east5-a; default from $TVTS_TPU_ZONE.")
  g.add_argument("--project", default=os.environ.get("TVTS_TPU_PROJECT"),
                 help="GCP project; default from $TVTS_TPU_PROJECT, else gcloud's configured project.")
  g.add_argument("--internal_ip", action="store_true",
                 help="ssh/scp over internal IPs (when launching from a VM in the same VPC).")
  g.add_argument("--dry_run", action="store_true", help="Print the commands instead of running them.")

  parser = argparse.ArgumentParser(
      prog="launch/tpu_pod.py", formatter_class=argparse.RawDescriptionHelpFormatter,
      description=__doc__.split("\n\n")[0], epilog="Run `launch/tpu_pod.py SUBCOMMAND -h` for flags.")
  sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

  p = sub.add_parser("create", parents=[common], formatter_class=fmt, help="Create a TPU VM (pod slice).")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5p-256, v4-512, v5litepod-256, v6e-256.")
  p.add_argument("--version", default=None,
                 help="TPU runtime version; default by generation: "
                      + ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items()))
  p.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper).")
  p.add_argument("--reserved", action="store_true", help="Use the project's reservation.")
  p.add_argument("--network", default=None, help="VPC network (gcloud default: 'default').")
  p.add_argument("--subnetwork", default=None, help="VPC subnetwork.")
  p.add_argument("--internal_ips", action="store_true", help="Workers get no external IPs.")
  p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                 help="Resource label (repeatable).")
  p.set_defaults(build=cmd_create)

  p = sub.add_parser("setup", parents=[common], formatter_class=fmt,
                     help="Put the project on every worker and pip install it with jax[tpu].")
  p.add_argument("--source", choices=["copy", "git"], default="copy",
                 help="copy: tar this checkout and scp it to all workers; git: clone/fetch --ref.")
  p.add_argument("--local_dir", default=str(PROJECT_ROOT), help="Checkout to copy (--source copy).")
  p.add_argument("--repo_url", default=None, help="Repository to clone (--source git).")
  p.add_argument("--ref", default="main", help="Branch, tag or commit to check out (--source git).")
  p.add_argument("--remote_dir", default="tvts", help="Project directory on the workers, relative to $HOME.")
  p.add_argument("--python", default="python3", help="Python interpreter on the workers.")
  p.add_argument("--jax_tpu", default=DEFAULT_JAX_TPU, help="pip requirement for JAX with TPU support.")
  p.add_argument("--pip_find_links", default=None, help="Extra pip -f location (e.g. libtpu releases).")
  p.add_argument("--pip_extra", action="append", default=[], metavar="REQUIREMENT",
                 help="Additional pip requirement to install (repeatable).")
  p.set_defaults(build=cmd_setup)

  p = sub.add_parser("run", parents=[common], formatter_class=fmt,
                     usage="%(prog)s [flags] -- COMMAND [ARGS ...]",
                     help="Run a command on all workers at once (in tmux / nohup / foreground).")
  p.add_argument("--mode", choices=["tmux", "nohup", "foreground"], default="tmux",
                 help="tmux/nohup: detached, survives disconnects, output to a log file per worker; "
                      "foreground: stream all workers' output here.")
  p.add_argument("--session", default="tvts", help="tmux session name; also the log file stem.")
  p.add_argument("--kill_existing", action="store_true", help="Kill a tmux session of the same name first.")
  p.add_argument("--remote_dir", default="tvts", help="Directory to run in, relative to $HOME.")
  p.add_argument("--log_dir", default="tvts_logs",
                 help="Log directory on each worker, relative to $HOME; file SESSION.$(hostname).log.")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="Environment variable for the command (repeatable).")
  p.add_argument("--forward_env", action="append", default=[], metavar="KEY",
                 help="Copy this variable's local value to the workers (repeatable; the value "
                      "appears in --dry_run output).")
  p.set_defaults(build=cmd_run)

  p = sub.add_parser("logs", parents=[common], formatter_class=fmt, help="Tail a worker's log file.")
  p.add_argument("--worker", default="0", help="Worker index (or 'all').")
  p.add_argument("--session", default="tvts", help="Session whose log to show.")
  p.add_argument("--log_dir", default="tvts_logs", help="Log directory on the workers.")
  p.add_argument("--lines", type=int, default=100, help="Number of lines.")
  p.add_argument("--follow", action="store_true", help="Keep following (tail -F).")
  p.set_defaults(build=cmd_logs)

  p = sub.add_parser("stop", parents=[common], formatter_class=fmt,
                     help="Stop a detached run (tmux or nohup) on all workers.")
  p.add_argument("--session", default="tvts", help="Session (tmux name / log stem) to stop.")
  p.add_argument("--log_dir", default="tvts_logs", help="Log directory on the workers (nohup pid file).")
  p.set_defaults(build=cmd_stop)

  p = sub.add_parser("ssh", parents=[common], formatter_class=fmt,
                     usage="%(prog)s [flags] [-- COMMAND ...]",
                     help="Open a shell on a worker, or run COMMAND on it.")
  p.add_argument("--worker", default="0", help="Worker index (or 'all').")
  p.set_defaults(build=cmd_ssh)

  p = sub.add_parser("delete", parents=[common], formatter_class=fmt, help="Delete the TPU VM.")
  p.add_argument("--yes", action="store_true", help="Do not ask for confirmation (gcloud --quiet).")
  p.add_argument("--async", dest="async_", action="store_true", help="Return without waiting.")
  p.set_defaults(build=cmd_delete)
  return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
  if "--" in argv:
    split = argv.index("--")
    argv, command = argv[:split], argv[split + 1:]
  else:
    command = []
  parser = build_parser()
  args = parser.parse_args(argv)
  if command and args.subcommand not in ("run", "ssh"):
    parser.error(f"{args.subcommand} takes no command after '--'")
  args.command = command
  for flag in ("name", "zone"):
    if not getattr(args, flag):
      parser.error(f"--{flag} is required (or set $TVTS_TPU_{flag.upper()})")
  return args


def build_commands(argv: list[str]) -> list[list[str]]:
  """The argument lists that `launch/tpu_pod.py ARGV` runs, in order."""
  args = parse_args(argv)
  return args.build(args)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  commands = args.build(args)
  for cmd in commands:
    if args.dry_run:
      print(shlex.join(cmd), flush=True)
      continue
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    code = subprocess.call(cmd)
    if code != 0:
      print(f"command failed with exit code {code}", file=sys.stderr)
      return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
