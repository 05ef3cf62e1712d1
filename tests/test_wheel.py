"""The package as an operator installs it: the built wheel in a fresh venv gives working
``cortex`` and ``neuron`` commands, their versions agree with what ``/node`` reports, and
``cortex up`` serves from it.

The wheel is built without build isolation (hatchling is a dev dependency) and installed with
``--no-deps``; the fresh venv finds the dependencies in this project's venv through a path
entry (which does not run that venv's ``.pth`` files, so the editable install of ``src/`` stays
out: ``cortex`` is imported from the wheel, and the test checks it is)."""

from __future__ import annotations

import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import cortex
from tests.e2e.procs import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the wheel; its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = dist.glob("cortex-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    )
    Path(found.stdout.strip(), "project-deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    return venv / "bin"


def test_the_commands_report_the_packages_version(installed: Path) -> None:
    for program in ("cortex", "neuron"):
        shown = subprocess.run(
            [str(installed / program), "--version"], check=True, capture_output=True, text=True
        )
        assert shown.stdout.strip() == f"{program} {cortex.__version__}"
    where = subprocess.run(
        [str(installed / "python"), "-c", "import cortex; print(cortex.__file__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert str(installed.parent) in where.stdout, where.stdout  # the wheel's, not src/


def test_cortex_up_serves_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    log = (tmp_path / "up.log").open("wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [str(installed / "cortex"), "up", "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{metrics}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "up.log").read_text()
            try:
                reply = httpx.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "cortex-tiny", "messages": [{"role": "user", "content": "Hi"}]},
                    timeout=30,
                )
                if reply.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        assert reply.json()["choices"][0]["message"]["content"]
        status = httpx.get(f"{url}/fleet", timeout=10).json()
        assert [node["version"] for node in status["nodes"]] == [cortex.__version__], status
        for name in ("", "console.js", "console.css"):  # the console's files are in the wheel
            assert httpx.get(f"{url}/ui/{name}", timeout=10).status_code == 200, name
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
