"""Stands in for vLLM's API server in the ServerManager tests that must run without vLLM.

Run as `python -m tests.serve.fake_vllm_server` with vLLM's command line. Like vLLM it starts a
child process (vLLM's engine core) in its own process group, then behaves as `VLLM_FAKE_MODE` says:
"serve" answers on --host/--port with the loopback OpenAI test server, "hang" never listens,
"crash" prints an error and exits with code 3, leaving its child running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from tests.serve.openai_test_server import OpenAITestServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    mode = os.environ.get("VLLM_FAKE_MODE", "serve")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"fake vllm: argv {sys.argv[1:]}", flush=True)
    print(f"fake vllm: engine pid {child.pid}", flush=True)
    print(f"fake vllm: PYTHONPATH {os.environ.get('PYTHONPATH', '')}", flush=True)
    if mode == "crash":
        print("fake vllm: error: the model cannot be loaded (test)", flush=True)
        return 3
    if mode == "serve":
        OpenAITestServer(port=args.port).start()
        print(f"fake vllm: serving on {args.host}:{args.port}", flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
