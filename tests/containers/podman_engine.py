"""podman as the container engine of the container tests: its Docker API socket (what DockerOperator talks to),
named volumes filled through the image itself (as its non-root user, no chmod), and reads back from them."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VERSION = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
               if line.startswith("version = "))
CPU_IMAGE = f"localhost/chat-retrain-cpu:{VERSION}"
INPUTS_CONFIG = "/app/data/inputs/config.yaml"  # the stage config inside the containers (load_tiny_inputs)


def podman(*args: str, stdin: bytes | None = None, check: bool = True, timeout: int = 600
           ) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], input=stdin, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}: {result.stderr.decode()[-2000:]}")
    return result


def require_image(image: str = CPU_IMAGE) -> None:
    if not shutil.which("podman") or podman("image", "exists", image, check=False).returncode != 0:
        pytest.fail(f"podman with the image {image} is needed: run `make images` first")


class DockerApiSocket:
    """`podman system service` on a socket of its own, for the duration of a test."""

    def __init__(self, directory: Path):
        self.path = directory / "podman.sock"
        self.url = f"unix://{self.path}"
        self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.url])
        deadline = time.monotonic() + 30
        while not self.path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"podman's Docker API socket {self.path} did not appear")
            time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def new_volume(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    return name


def remove_volumes(*names: str) -> None:
    for name in names:
        podman("volume", "rm", "--force", name, check=False)


def copy_into_volume(volume: str, mount: str, files: dict[str, Path], image: str = CPU_IMAGE) -> None:
    """Put host files into a named volume through the image, as its user: the volume is owned as in the image."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, source in files.items():
            tar.add(source, arcname=name)
    podman("run", "--rm", "-i", "-v", f"{volume}:{mount}", "--entrypoint", "tar", image, "-x", "-C", mount,
           "--no-same-owner", stdin=buffer.getvalue())


def list_volume(volume: str, mount: str, image: str = CPU_IMAGE) -> dict[str, str]:
    """path (relative to the mount) -> owner's uid, for everything in a named volume."""
    listing = podman("run", "--rm", "-v", f"{volume}:{mount}", "--entrypoint", "find", image, mount, "-printf",
                     "%P %U\\n").stdout.decode()
    return dict(line.rsplit(" ", 1) for line in listing.splitlines() if line.strip())


def load_tiny_inputs(volume: str, directory: Path, tiny_model_dir: Path) -> dict:
    """configs/tiny.yaml with the tiny model as base model, both put in the data volume under inputs/; its paths
    (data/, runs/) resolve in /app. Returns the config as written."""
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["project"]["base_model"] = "/app/data/inputs/tiny-model"
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    copy_into_volume(volume, "/app/data", {"inputs/config.yaml": directory / "config.yaml",
                                          "inputs/tiny-model": tiny_model_dir})
    return config
