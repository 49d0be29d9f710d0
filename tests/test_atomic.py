"""Output folders under storage that refuses writes: one error naming the output, nothing left.

The refusal is real: a child process writes under a file-size limit (RLIMIT_FSIZE, SIGXFSZ
ignored), so the kernel fails the write with EFBIG as a full disk fails it with ENOSPC.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1 << 20

CHILD = """
import errno, resource, signal, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from studio.atomic import atomic_directory

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
out = Path(sys.argv[1]) / "out"
try:
    with atomic_directory(out) as staging:
        if sys.argv[2] == "plain":
            (staging / "big.bin").write_bytes(b"x" * ({limit} * 2))
        else:
            save_file({{"w": torch.zeros({limit} // 2)}}, str(staging / "model.safetensors"))
except OSError as err:
    print(err.errno, err)
"""


@pytest.mark.parametrize("writer, reason", [
    ("plain", "File too large"),  # an OSError from Python's own write
    ("safetensors", "File too large (os error 27)"),  # safetensors' SafetensorError wrapping it
])
def test_a_refused_write_names_the_output_and_leaves_nothing(tmp_path, writer, reason):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD.format(limit=LIMIT)), str(tmp_path), writer],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"27 {tmp_path}/out: {reason} while writing it (the partial output was removed)"
    assert list(tmp_path.iterdir()) == []
