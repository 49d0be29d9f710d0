"""Responsiveness of the studio UI: edit -> estimate round trip, concurrent estimates, plot payloads.

    python benchmarks/bench_ui.py [--url http://127.0.0.1:7860] [--edits 20] [--users 24] [--calls 10]

Without --url, starts `app.py` on a free port with STUDIO_HOME in a temporary folder (and stops it).
Through gradio_client, on E4B's config with the card's preset, it times `edit_plan` (a width edit,
a new width each time) followed by `estimate`, as the browser runs them, and prints the median and
90th percentile. It first prints the JSON size of each analysis figure for a synthetic 42 x 10240 model (random scores,
the card's widths) beside the size of the raw scores. Last, `--users` concurrent gradio_client
sessions (each its own browser session with E4B and the card's preset loaded) call `estimate`
`--calls` times each at once, and it prints the median and 95th percentile latency, the estimates
per second and the errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "ui"))


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    from conftest import free_port, wait_until_up  # the test fixture's helpers

    port = free_port()
    log = home / "app.log"
    env = {**os.environ, "STUDIO_HOME": str(home), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--no-worker"],
                                   cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process, log)
    return process, url


def edit_round_trips(url: str, edits: int) -> list[float]:
    from studio.ui.context import E4B_CONFIG_ONLY

    client = client_for(url)
    client.predict(E4B_CONFIG_ONLY, api_name="/load_model")
    table, _ = client.predict("gemma4-lite-round2", api_name="/load_preset")
    seconds = []
    for k in range(edits):
        rows = table["data"]
        # A new width every time (10240 - 128 (k + 1)), so no estimate is answered from the cache.
        rows[4][5] = 10240 - 128 * (k + 1)
        start = time.perf_counter()
        table, _ = client.predict({"headers": table["headers"], "data": rows}, api_name="/edit_plan")
        client.predict(True, "4", "128", api_name="/estimate")
        seconds.append(time.perf_counter() - start)
    return seconds


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of already sorted values."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def client_for(url: str):
    """A gradio_client session. `ssl_verify=False` on plain http: verification does nothing there,
    but httpx loads the CA bundle for every request (~16 ms of CPU), which on a 2-core machine running
    both ends was most of what the concurrent case measured."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=not url.startswith("http://"))


def card_session(url: str):
    """A gradio_client session (its own server-side state) with E4B and the card's preset loaded."""
    from studio.ui.context import CARD_PRESET, E4B_CONFIG_ONLY

    client = client_for(url)
    client.predict(E4B_CONFIG_ONLY, api_name="/load_model")
    client.predict(CARD_PRESET, api_name="/load_preset")
    return client


def concurrent_estimates(url: str, users: int, calls: int) -> tuple[list[float], int, float]:
    """`users` sessions calling /estimate `calls` times each, all at once.

    Returns (latencies in seconds, errors, wall seconds of the concurrent part).
    """
    with ThreadPoolExecutor(users) as pool:
        clients = list(pool.map(lambda _: card_session(url), range(users)))
    start_together = threading.Barrier(users)

    def user(client) -> tuple[list[float], int]:
        start_together.wait()
        seconds, errors = [], 0
        for k in range(calls):
            start = time.perf_counter()
            try:
                client.predict(True, "4", "128" if k % 2 == 0 else "64", api_name="/estimate")
            except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                errors += 1
            seconds.append(time.perf_counter() - start)
        return seconds, errors

    wall = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        results = list(pool.map(user, clients))
    wall = time.perf_counter() - wall
    for client in clients:
        client.close()
    return sorted(s for seconds, _ in results for s in seconds), sum(e for _, e in results), wall


def synthetic_payloads() -> dict[str, int]:
    import torch

    from studio.model_summary import kv_roles
    from studio.modeling import load_text_config, original_widths
    from studio.plans.plan import find_preset, load_plan
    from studio.plots import (
        figure_payload_bytes,
        gptq_loss_figure,
        score_distribution_figure,
        score_summary,
        size_breakdown_figure,
        widths_figure,
    )
    from studio.gptq.quantize import ModuleQuantRecord, QuantizeSettings
    from studio.sizes import config_from_file, estimate_stages, model_shapes
    from studio.ui.context import REFERENCE_CONFIG

    config = load_text_config(REFERENCE_CONFIG)
    plan = load_plan(find_preset("gemma4-lite-round2"), config)
    scores = [torch.randn(10240, dtype=torch.float64) for _ in range(42)]
    records = [ModuleQuantRecord(i, m, 1e-3, 256, 0.01, 0.1) for i in range(42)
               for m in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    kinds = ["full" if t == "full_attention" else "sliding" for t in config.layer_types]
    stages = estimate_stages(model_shapes(config_from_file(REFERENCE_CONFIG)), plan.widths, QuantizeSettings())
    figures = {
        "scores": score_distribution_figure(score_summary(scores, plan.widths)),
        "widths": widths_figure(plan.widths, original_widths(config), kinds, kv_roles(config)),
        "gptq": gptq_loss_figure(records),
        "sizes": size_breakdown_figure({stage: report.bytes_by_component() for stage, report in stages.items()}),
    }
    payloads = {name: figure_payload_bytes(fig) for name, fig in figures.items()}
    payloads["raw scores as JSON (not sent)"] = len(json.dumps([s.tolist() for s in scores]))
    return payloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running studio (default: start one)")
    parser.add_argument("--edits", type=int, default=20, help="edit round trips to time (default: 20)")
    parser.add_argument("--users", type=int, default=24, help="concurrent sessions calling /estimate (default: 24)")
    parser.add_argument("--calls", type=int, default=10, help="estimates per concurrent session (default: 10)")
    args = parser.parse_args()

    print("plot payloads, 42 x 10240 model (bytes of figure JSON):")
    for name, size in synthetic_payloads().items():
        print(f"  {name:32s} {size:>10,d}")

    process = None
    with tempfile.TemporaryDirectory() as home:
        url = args.url
        if url is None:
            process, url = start_app(Path(home))
        try:
            seconds = sorted(edit_round_trips(url, args.edits))
            concurrent, errors, wall = concurrent_estimates(url, args.users, args.calls) if args.users else ([], 0, 0.0)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    print(f"table edit -> estimate round trip over {len(seconds)} edits (E4B, card preset): "
          f"median {statistics.median(seconds) * 1000:.0f} ms, p90 {percentile(seconds, 0.9) * 1000:.0f} ms")
    if concurrent:
        print(f"/estimate with {args.users} concurrent users x {args.calls} calls: "
              f"median {statistics.median(concurrent) * 1000:.0f} ms, p95 {percentile(concurrent, 0.95) * 1000:.0f} ms, "
              f"{len(concurrent) / wall:.1f} estimates/s, {errors} errors")


if __name__ == "__main__":
    main()
