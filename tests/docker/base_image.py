"""A local stand-in for the submission image's base (``pytorch/pytorch``), built with debootstrap + buildah.

Registries of container images cannot be reached from the development and CI machines, so the image test
builds its base itself: Debian bookworm (minbase, its Python 3.11) with a virtual environment holding the
host's torch and torchvision versions, i.e. "an image with Python and torch whose python is on PATH", the
Dockerfile's only requirement, with a torchvision that matches torch as in ``pytorch/pytorch`` (segment-anything
imports torchvision, and a PyPI torchvision next to a torch of another build does not import). The wheels
are fetched by the host's pip (``pip download``, so its configured indexes and local wheel folders serve them)
and installed offline inside the root file system. Two more things are taken from the host so that ``pip``
inside the image build works here as on the host: DNS (``/etc/resolv.conf``) and the CA bundle (where
outgoing HTTPS passes an inspecting proxy, its CA is in the host's bundle); ``PIP_CERT`` points pip at it.

Built once per machine and kept in buildah's storage under :data:`TAG`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TAG = "localhost/sam-nnunet-test-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def missing_tools() -> list:
    """What this machine lacks to build and run the image (empty when nothing)."""
    missing = [tool for tool in ("buildah", "debootstrap", "unshare", "chroot") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap, chroot and buildah mount need it)")
    return missing


def run(cmd, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def image_exists(tag: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True).returncode == 0


def torch_requirements() -> list:
    """``torch==X`` and ``torchvision==Y`` as installed on the host (local version labels dropped)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "torchvision")]


def ensure_base_image(tag: str = TAG) -> str:
    """Build the base image unless buildah already holds ``tag``; returns the tag.

    The root file system is made directly in the mounted working container (no copy of its 6 GB).
    """
    if image_exists(tag):
        return tag
    container = run(["buildah", "from", "scratch"])
    try:
        root = Path(run(["buildah", "mount", container]))
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
             str(root), MIRROR])
        shutil.copyfile(HOST_CA, root / "etc/ssl/certs/ca-certificates.crt")
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        wheels = root / "tmp" / "wheels"
        run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
             "-d", str(wheels), *torch_requirements()])
        run(["chroot", str(root), "python3", "-m", "venv", "/opt/venv"])
        run(["chroot", str(root), "/opt/venv/bin/pip", "install", "-q", "--no-cache-dir", "--no-index",
             "--find-links", "/tmp/wheels", *torch_requirements()],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PIP_CONFIG_FILE": "/dev/null"})
        shutil.rmtree(wheels)
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        run(["buildah", "umount", container])
        run(["buildah", "config", "--env", "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "--cmd", "python3", container])
        run(["buildah", "commit", "-q", container, tag])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return tag
