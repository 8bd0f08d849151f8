"""The cluster configs parse and carry the fields Ray's launcher and KubeRay require."""

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_ray_cluster_launcher_config():
    c = load("aws-gpu.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands", "docker"):
        assert key in c, key
    assert c["provider"]["type"] == "aws" and c["head_node_type"] in c["available_node_types"]
    assert "ray-ml" not in c["docker"]["image"] and c["docker"]["image"].startswith("rayproject/ray:") and "gpu" in c["docker"]["image"]
    gpu = [t for t in c["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all("InstanceType" in t["node_config"] and t["max_workers"] >= t.get("min_workers", 0) for t in gpu)
    assert any("ray start --head" in cmd for cmd in c["head_start_ray_commands"])
    assert any("--address" in cmd for cmd in c["worker_start_ray_commands"])
    # Ray 2.60 token auth: the same token on every node, token mode on every ray start
    assert any(k.endswith("/.ray/auth_token") for k in c["file_mounts"])
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in c["head_start_ray_commands"] + c["worker_start_ray_commands"]
               if "ray start" in cmd)


def test_kuberay_cluster_and_job():
    rc = load("kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert "rayStartParams" in spec["headGroupSpec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].startswith("rayproject/ray:")
    groups = spec["workerGroupSpecs"]
    assert groups and all({"groupName", "rayStartParams", "template", "maxReplicas"} <= set(g) for g in groups)
    lim = groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert str(lim["nvidia.com/gpu"]) == "1"
    job = load("kuberay/rayjob.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("regtune search --space")
    assert "--storage-path /mnt/shared" in job["spec"]["entrypoint"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]


def test_runtime_env_and_mlflow_server():
    env = load("runtime_env.yaml")
    assert "working_dir" in env and any("[study]" in p for p in env["pip"]["packages"])
    compose = load("mlflow/docker-compose.yaml")
    cmd = compose["services"]["mlflow"]["command"]
    assert "postgresql+psycopg://" in cmd and "psycopg[binary]" in cmd and "--serve-artifacts" in cmd and "--app-name basic-auth" in cmd
    assert all(p.startswith("127.0.0.1:") for p in compose["services"]["mlflow"]["ports"])  # never an open 0.0.0.0
