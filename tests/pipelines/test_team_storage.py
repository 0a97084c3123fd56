"""Team scale storage (docs/deployment.md, "Team setup"): a DVC remote on S3 and MLflow's artifact store on S3,
with moto's S3 server on 127.0.0.1 standing in for S3 or any S3-compatible store, and Debian's PostgreSQL as
MLflow's backend store. Everything starts here on loopback and stops by itself; the fake credentials exist only
in what is meant to talk to S3."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from sdft_core.lineage import dvc_dir_md5
from tests.services import BIN, MotoS3, Postgres, isolate_from_aws_config, mlflow_server

DOCKER = Path(__file__).resolve().parents[2] / "docker"
S3_SETTINGS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def test_the_compose_stack_can_keep_mlflow_artifacts_on_s3_with_its_settings_only_from_docker_env():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"]
    destination = command[command.index("--artifacts-destination") + 1]
    assert destination == "${MLFLOW_ARTIFACTS_DESTINATION:-/artifacts/mlflow}"  # the volume unless .env says s3://
    # passed through by name: from docker/.env (or the shell), unset in the container when not given, no defaults
    assert all(name in mlflow["environment"] and mlflow["environment"][name] is None for name in S3_SETTINGS)
    for name, service in compose["services"].items():
        if name != "mlflow":  # proxied artifacts: nothing else needs the store's keys
            assert not any(key.startswith("AWS_") for key in service.get("environment") or {}), name
    # the template names every setting but sets none (an empty endpoint URL would break boto3)
    example = (DOCKER / ".env.example").read_text()
    assert all(re.search(rf"^# {name}=", example, re.M) for name in (*S3_SETTINGS, "MLFLOW_ARTIFACTS_DESTINATION"))
    assert not re.search(r"^(AWS_|MLFLOW_)", example, re.M)
    # the server's image has boto3 (and dvc-s3)
    assert re.search(r"uv pip install .*-e '\.\[[^]]*\bs3\b", (DOCKER / "train.Dockerfile").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Workspace:
    """git and dvc in a scratch folder, with no user or system config of this machine and no network besides
    the S3 endpoint (no analytics, no update check)."""

    def __init__(self, root: Path):
        self.env = {
            **os.environ,
            "DVC_NO_ANALYTICS": "1",
            "DVC_GLOBAL_CONFIG_DIR": str(root / "dvc-global"),
            "DVC_SYSTEM_CONFIG_DIR": str(root / "dvc-system"),
            "DVC_SITE_CACHE_DIR": str(root / "dvc-site-cache"),
            "GIT_CONFIG_GLOBAL": str(root / "gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "sdft test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "sdft test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }

    def run(self, cwd: Path, *command: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(command, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def dvc(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
        return self.run(cwd, str(BIN / "dvc"), *args, env=env)


@pytest.mark.slow  # an S3 server, two clones, dvc push and pull, ~17 s
def test_a_team_shares_data_through_a_dvc_remote_on_s3_and_a_teammate_pulls_it_back_identical(
    tmp_path, monkeypatch, s3
):
    isolate_from_aws_config(monkeypatch, tmp_path)
    bucket = s3.create_bucket("sdft-dvc-" + secrets.token_hex(4))
    work = Workspace(tmp_path)
    # Alice sets up the project's shared remote as docs/deployment.md says; her credentials are the standard AWS
    # environment variables
    alice = tmp_path / "alice"
    alice.mkdir()
    work.run(alice, "git", "init", "-q")
    work.dvc(alice, "init", "-q")
    work.dvc(alice, "remote", "add", "-d", "storage", f"s3://{bucket}/dvc")
    work.dvc(alice, "remote", "modify", "storage", "endpointurl", s3.endpoint)
    data = alice / "data"
    (data / "skills" / "toy").mkdir(parents=True)
    (data / "skills" / "toy" / "demonstrations.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}", "demonstration": f"a{i}"}) + "\n" for i in range(20))
    )
    (data / "benchmarks").mkdir()
    (data / "benchmarks" / "weights.bin").write_bytes(os.urandom(300_000))
    expected = files(data)
    work.dvc(alice, "add", "-q", "data")
    tracked = yaml.safe_load((alice / "data.dvc").read_text())["outs"][0]["md5"]
    assert tracked == dvc_dir_md5(data)  # the hash the pipeline records as the data version
    work.run(alice, "git", "add", ".")
    work.run(alice, "git", "commit", "-q", "-m", "data on the team's remote")
    assert "3 files pushed" in work.dvc(alice, "push", env=s3.env)

    # the remote holds the files content-addressed, and the folder's manifest under the tracked hash
    stored = s3.objects(bucket, "dvc/")
    assert f"dvc/files/md5/{tracked[:2]}/{tracked[2:]}" in stored
    assert sorted(content for key, content in stored.items() if not key.endswith(".dir")) == sorted(expected.values())

    # Alice loses her workspace and her cache: `dvc pull` brings back the same bytes at the same hash
    for path in (data, alice / ".dvc" / "cache"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    work.dvc(alice, "pull", "-q", env=s3.env)
    assert files(data) == expected and dvc_dir_md5(data) == tracked

    # Bob clones the repository and keeps his keys in .dvc/config.local (git-ignored), not in his environment;
    # `make data` then pulls from the shared remote exactly so (`dvc pull data.dvc`)
    bob = tmp_path / "bob"
    work.run(tmp_path, "git", "clone", "-q", str(alice), str(bob))
    assert not (bob / "data").exists() and not (bob / ".dvc" / "cache").exists()
    work.dvc(bob, "remote", "modify", "--local", "storage", "access_key_id", s3.env["AWS_ACCESS_KEY_ID"])
    work.dvc(bob, "remote", "modify", "--local", "storage", "secret_access_key", s3.env["AWS_SECRET_ACCESS_KEY"])
    work.dvc(bob, "pull", "-q", "data.dvc")
    assert files(bob / "data") == expected and dvc_dir_md5(bob / "data") == tracked
    committed = (bob / ".dvc" / "config").read_text()
    assert "endpointurl" in committed and s3.env["AWS_SECRET_ACCESS_KEY"] not in committed
    assert work.run(bob, "git", "status", "--porcelain") == ""  # config.local is ignored, data/ too


@pytest.mark.slow  # a PostgreSQL cluster, an MLflow server and a logged chat model, ~1-2 min
def test_an_mlflow_server_on_postgres_keeps_artifacts_and_models_on_s3_and_serves_them_back_identical(
    tmp_path, monkeypatch, s3, tiny_model_dir
):
    import mlflow
    from safetensors.torch import load_file

    from pipelines.defs.resources import MlflowRegistry

    isolate_from_aws_config(monkeypatch, tmp_path)  # the client has no S3 credentials: the server proxies
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")  # restored after the registry moves it
    bucket = s3.create_bucket("sdft-mlflow-" + secrets.token_hex(4))
    server_env = {**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    with (
        Postgres() as postgres,
        mlflow_server(postgres.uri("mlflow"), f"s3://{bucket}/mlflow", tmp_path, env=server_env) as url,
    ):
        registry = MlflowRegistry(tracking_uri=url, base_model=str(tiny_model_dir), model_cache=str(tmp_path / "cache"))
        run_id = registry.run_for_key("team-s3", {"skill": "toy"}, "team-s3")
        report = tmp_path / "report.json"
        report.write_text(json.dumps({"new skill": 0.5, "prior average": 0.25}))
        registry.client().log_artifact(run_id, str(report), "eval")
        source = registry.log_model(run_id, tiny_model_dir)
        version = registry.register(run_id, source, {"skill": "toy"})
        registry.promote(int(version.version), "team storage test")

        # the backend store is PostgreSQL, the artifacts are objects in the bucket, nothing on the server's disk
        assert postgres.query("mlflow", "select count(*) from model_versions") == "1"
        logged = registry.client().get_logged_model(source.removeprefix("models:/"))
        assert logged.artifact_location.startswith("mlflow-artifacts:")  # clients go through the server
        stored = s3.objects(bucket, "mlflow/")
        reports = [key for key in stored if key.endswith(f"{run_id}/artifacts/eval/report.json")]
        assert len(reports) == 1 and stored[reports[0]] == report.read_bytes()
        weights = [key for key in stored if key.endswith("model/model.safetensors")]
        assert len(weights) == 1 and weights[0].startswith("mlflow/")
        assert not any(tmp_path.glob("mlartifacts")) and not any(tmp_path.rglob("MLmodel"))

        # both come back through the server, byte for byte what the bucket holds
        downloaded = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="eval/report.json", dst_path=str(tmp_path / "back"), tracking_uri=url
        )
        assert Path(downloaded).read_bytes() == report.read_bytes()
        champion = registry.parent()
        assert champion.version == int(version.version)
        folder = Path(champion.model)
        assert (folder / "model.safetensors").read_bytes() == stored[weights[0]]
        # and the weights are the model that was logged
        original, back = load_file(tiny_model_dir / "model.safetensors"), load_file(folder / "model.safetensors")
        assert original.keys() == back.keys()
        assert all((original[name] == back[name]).all() for name in original)
