"""The README's long-lived cluster recipe, run as it stands, and what a client with a token problem is told.

The recipe block is read from README.md (the block after the marker comment) and run line by line, in one
shell, in a network namespace of its own: its own 127.0.0.1 and port 6379 (other Rays on this machine hold
the real ones), a veth pair with a default route (so Ray finds an outward address, as on a real
machine), a HOME of its own (the token it makes) and RAY_TMPDIR (Ray's session files). Its head then serves
the token tests: `encode`, `status` and `budget` without RAY_AUTH_MODE=token or with another token must each
say so in one line, within the connect timeout, and print none of Ray's C++ warnings.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests import mediacheck as mc

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- tests/test_readme.py runs the next block line by line"


def recipe_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """The commands of the README's tested block: its lines without comments and blank lines."""
    text = readme.read_text(encoding="utf-8")
    assert MARKER in text, "README.md lost the tested recipe's marker"
    block = re.search(r"```(?:bash|sh)\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, "no code block after the marker"
    lines = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def test_recipe_has_the_steps_a_new_user_needs():
    """Token made and private, the head through the script, PATH, the client's auth mode, --address."""
    lines = recipe_lines()
    joined = "\n".join(lines)
    for needed in ("ray get-auth-token --generate", "chmod 600 ~/.ray/auth_token", "scripts/ray-start-node.sh --head",
                   'export PATH="$PWD/.venv/bin:$PATH"', "export RAY_AUTH_MODE=token", "--address 127.0.0.1:6379"):
        assert needed in joined, needed
    assert joined.index("PATH=") < joined.index("ray get-auth-token") < joined.index("ray-start-node.sh")
    assert joined.index("RAY_AUTH_MODE=token") < joined.index("montage-ray encode")


def _ns(ns: str, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, **kwargs)


def _teardown(ns: str) -> None:
    for _ in range(3):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.5)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _env(home: Path, tmp: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: no Ray or montage settings of this test session, a HOME of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MONTAGE_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), RAY_TMPDIR=str(tmp / "ray"), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="module")
def readme_cluster():
    """The recipe run in a network namespace; yields (namespace, folder, the shell's result); then every
    process of the namespace is killed and the namespace deleted."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    ns = f"mr-readme-{uuid.uuid4().hex[:6]}"
    folder = Path(tempfile.mkdtemp(prefix="mrreadme-"))  # short: Ray's socket paths have a length limit
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["ip", "addr", "add", "198.18.200.1/24", "dev", "v0"], ["ip", "link", "set", "v0", "up"],
                    ["ip", "link", "set", "v1", "up"], ["ip", "route", "add", "default", "via", "198.18.200.2"]):
            _ns(ns, *cmd)
        (folder / "home").mkdir()
        (folder / "ray").mkdir()
        for name in ("scripts", ".venv"):  # the checkout, as the user's working folder sees it
            (folder / name).symlink_to(ROOT / name)
        subprocess.run([mc.FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=4",
                        "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", str(folder / "input.mp4")],
                       check=True, timeout=60)
        script = "set -e\n" + "\n".join(recipe_lines()) + "\n"
        done = _ns(ns, "bash", "-x", "-c", script, check=False, cwd=folder, env=_env(folder / "home", folder),
                   capture_output=True, text=True, timeout=240)
        yield ns, folder, done
    finally:
        _teardown(ns)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_readme_recipe_runs_line_by_line(readme_cluster):
    ns, folder, done = readme_cluster
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ran = [line[2:] for line in done.stderr.splitlines() if line.startswith("+ ")]
    assert len(ran) >= len(recipe_lines()), ran   # every line ran (bash -x traces each)
    token = folder / "home" / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert mc.decoded_frames(folder / "output.mp4") == 120
    assert "wrote output.mp4" in done.stdout
    assert re.search(r"encoder service: 1 actor\(s\), 0 job\(s\) in flight", done.stdout), done.stdout
    assert "Traceback" not in done.stderr and "InvalidAuthToken" not in done.stderr


TOKEN_CASES = {
    "no-auth-mode": ({}, "requires a token and this client sends none: export RAY_AUTH_MODE=token"),
    "wrong-token": ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-cluster-token"},
                    "refused this client's token (from $RAY_AUTH_TOKEN)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["encode", "status", "budget"])
@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
def test_a_token_problem_is_one_line_within_the_connect_timeout(readme_cluster, command, case):
    ns, folder, done = readme_cluster
    assert done.returncode == 0, "the recipe's head did not start"
    extra, needle = TOKEN_CASES[case]
    args = {"encode": ["encode", "input.mp4", f"{case}-{command}.mp4"], "status": ["status"],
            "budget": ["budget"]}[command]
    started = time.monotonic()
    run = _ns(ns, str(folder / ".venv" / "bin" / "montage-ray"), *args, "--address", "127.0.0.1:6379", check=False,
              cwd=folder, capture_output=True, text=True, timeout=120,
              env=_env(folder / "home", folder, MONTAGE_RAY_CONNECT_TIMEOUT="3", **extra))
    took = time.monotonic() - started
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 6 and len(lines) == 1, run.stderr
    assert lines[0].startswith("montage-ray: error: Ray at 127.0.0.1:6379 ") and needle in lines[0], lines[0]
    assert "gcs_client" not in run.stderr
    assert [line for line in run.stdout.splitlines() if not line.startswith("job ")] == []  # (encode names its id)
    # Ray's own retries took ~20 s whatever the timeout; what is left is Python and Ray's import
    assert took < 15, f"{took:.1f} s"
    assert not (folder / f"{case}-{command}.mp4").exists()
