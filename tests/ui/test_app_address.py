"""`python app.py` binds where --host/--port say, else where Gradio's environment variables say."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.ui.conftest import REPO, free_port, stop_studio, wait_until_up


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("studio_app_script", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, environ, address",
    [
        ([], {}, ("127.0.0.1", 7860)),
        ([], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"}, ("0.0.0.0", 8123)),
        (["--host", "::1", "--port", "9000"], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"}, ("::1", 9000)),
        (["--port", "9001"], {"GRADIO_SERVER_NAME": "0.0.0.0"}, ("0.0.0.0", 9001)),
    ],
)
def test_flags_win_over_gradio_variables_which_win_over_defaults(app_module, argv, environ, address):
    args = app_module.parse_args(argv, environ)
    assert (args.host, args.port) == address


@pytest.mark.parametrize("port", ["http", "0", "70000"])
def test_a_bad_gradio_server_port_is_named(app_module, port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        app_module.parse_args([], {"GRADIO_SERVER_PORT": port})
    assert exit_info.value.code == 2
    assert f"GRADIO_SERVER_PORT: a port number from 1 to 65535, got {port!r}" in capsys.readouterr().err


def test_the_app_listens_on_gradio_server_port(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "STUDIO_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    log = tmp_path / "app.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-worker"], cwd=REPO, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as response:
            assert response.status == 200
    finally:
        stop_studio(process)
