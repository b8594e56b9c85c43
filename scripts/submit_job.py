#!/usr/bin/env python3
"""Submit a montage-ray command to a Ray cluster as a Ray job, follow its logs, exit with its status.

The job runs ``python -m montage_ray ARGS...`` on the cluster's head (the job's driver), and the package
travels with it in the job's runtime_env (``py_modules``), so the cluster runs the code of this checkout
even where an older montage-ray is installed. Paths in ARGS are paths on the head, not here::

    python scripts/submit_job.py --address http://127.0.0.1:8265 -- \\
        encode /media/in.mp4 /media/out.mp4 --codec hevc --quality 24 --report /media/out.json

    python scripts/submit_job.py -- probe --json          # what the head node offers

Token authentication (Ray 2.52+): when the cluster has it on, every request to the job API must carry the
cluster's token. This script sends ``Authorization: Bearer <token>`` with the first token it finds:
``--token-file``, then ``$RAY_AUTH_TOKEN``, then ``$RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``
(where ``ray get-auth-token --generate`` and a local ``ray.init()`` put it). Set ``RAY_AUTH_MODE=disabled``
to send none. The same from a shell, with Ray's own CLI::

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env-json '{"py_modules": ["./montage_ray"]}' -- python -m montage_ray probe --json

Exit status: the job's (0 when it SUCCEEDED, 1 when it FAILED or was STOPPED), 2 for a usage error, 3
when the cluster refused the request or could not be reached. Ctrl-C stops following, not the job,
unless ``--stop-on-interrupt`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def find_token(token_file: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The cluster token this client should send, or None: the same order Ray itself looks in."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    candidates: list[Path] = []
    if token_file:
        candidates.append(Path(token_file).expanduser())
    elif env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    elif env.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append(Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser())
    else:
        candidates.append(Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token")
    for path in candidates:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            if token_file or "RAY_AUTH_TOKEN_PATH" in env:
                raise SystemExit(f"submit_job: cannot read the token file {path}")
            return None
        if token:
            return token
    return None


def package_dir() -> str:
    """The montage_ray package directory to ship: this checkout's, else the installed one."""
    local = ROOT / "montage_ray"
    if (local / "__init__.py").is_file():
        return str(local)
    import montage_ray  # noqa: PLC0415 - only when running outside a checkout

    return os.path.dirname(montage_ray.__file__)


def check_encode_options(command: list[str]) -> None:
    """For ``encode``, build the job's :class:`~montage_ray.job.options.EncodeOptions` here and check the values
    that need no file (the paths are the head's), so a bad option fails now, not on the cluster."""
    if not command or command[0] != "encode":
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from montage_ray._cli import build_parser  # noqa: PLC0415
    from montage_ray._cli.encode_cmd import options_from_args  # noqa: PLC0415
    from montage_ray.errors import InputError  # noqa: PLC0415

    try:
        options_from_args(build_parser().parse_args(command)).check_values()
    except InputError as err:
        print(f"submit_job: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def build_request(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``JobSubmissionClient.submit_job`` for these options."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SystemExit("submit_job: give the montage-ray command after --, e.g. -- probe --json")
    check_encode_options(command)
    # RAY_OVERRIDE_JOB_RUNTIME_ENV: montage-ray's own ray.init() (an encode given an address, as a job's
    # driver is through $RAY_ADDRESS) asks for the same py_modules; Ray refuses two runtime_envs that
    # name one field unless told to combine them.
    runtime_env: dict = {"env_vars": {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}}
    if not args.use_installed:
        runtime_env["py_modules"] = [package_dir()]
    request = {
        "entrypoint": shlex.join(["python", "-m", "montage_ray", *command]),
        "runtime_env": runtime_env,
        "metadata": {"submitted_by": "montage-ray scripts/submit_job.py"},
    }
    if args.submission_id:
        request["submission_id"] = args.submission_id
    if args.entrypoint_num_cpus is not None:
        request["entrypoint_num_cpus"] = args.entrypoint_num_cpus
    return request


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="submit_job.py", description=__doc__.split("\n\n")[0],
        epilog="Everything after -- is the montage-ray command line, run on the cluster's head.")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS")
                   or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_ADDRESS,
                   help="the Ray dashboard / job API of the head (default: $RAY_API_SERVER_ADDRESS, "
                        f"else {DEFAULT_ADDRESS}, e.g. through `kubectl port-forward` or `ray dashboard`)")
    p.add_argument("--token-file", metavar="PATH", default=None,
                   help="read the cluster's auth token from PATH (default: $RAY_AUTH_TOKEN, "
                        "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
    p.add_argument("--use-installed", action="store_true",
                   help="use the montage-ray installed on the cluster instead of shipping this checkout")
    p.add_argument("--submission-id", default=None, help="a job id of your own (default: Ray picks one)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, metavar="N",
                   help="CPUs to reserve for the job's driver (default: none)")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id and return")
    p.add_argument("--stop-on-interrupt", action="store_true", help="stop the job on Ctrl-C")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="montage-ray arguments, e.g. -- encode /media/in.mp4 /media/out.mp4")
    return p.parse_args(argv)


def _submit_when_ready(client, request: dict, patience: float = 180.0) -> str:
    """Submit; a head that has just started answers "No available agent" until its job agent is up."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return client.submit_job(**request)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _wait_for_end(client, job_id: str, timeout: float = 30.0) -> str:
    """The job's final status; the log stream can end a moment before the status does."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while True:
        status = client.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    request = build_request(args)

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = find_token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        client = JobSubmissionClient(args.address, headers=headers)
        job_id = _submit_when_ready(client, request)
    except (AuthenticationError, ConnectionError, RuntimeError) as err:
        hint = "" if token else (" (no auth token was found: if the cluster has token authentication on, "
                                 "pass --token-file or set RAY_AUTH_TOKEN)")
        print(f"submit_job: {args.address}: {str(err).strip().splitlines()[0]}{hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"submit_job: submitted {job_id} to {args.address}: {request['entrypoint']}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return EXIT_SUCCEEDED
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        if args.stop_on_interrupt:
            client.stop_job(job_id)
            print(f"submit_job: stopped {job_id}", file=sys.stderr)
        else:
            print(f"submit_job: stopped following; {job_id} goes on (`ray job stop {job_id}` ends it)",
                  file=sys.stderr)
        return 130
    status = _wait_for_end(client, job_id)
    print(f"submit_job: {job_id} {status}", file=sys.stderr)
    return EXIT_SUCCEEDED if status == JobStatus.SUCCEEDED else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
