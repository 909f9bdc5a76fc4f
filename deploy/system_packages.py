"""Tools from Debian's packages that the browser test and the benchmarks need (chromium, wrk), installed with
apt-get when missing: the tests and `make bench` run as root on a fresh machine, which has neither."""

from __future__ import annotations

import os
import shutil
import subprocess


def debian_binary(command: str, package: str | None = None) -> str:
    """The path of `command`, after `apt-get install -y <package>` (default: the command's name) when it is
    missing; RuntimeError when it cannot be had (not root, or the package installs no such command)."""
    found = shutil.which(command)
    if found:
        return found
    package = package or command
    if os.geteuid() != 0:
        raise RuntimeError(f"{command} is missing: apt-get install -y {package} (as root)")
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{command} is missing and this is no Debian machine: install it ({package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", package]
    if subprocess.run(install, env=env, check=False).returncode != 0:  # noqa: S603 - a package list too old
        subprocess.run([apt, "update"], env=env, check=True)  # noqa: S603 - fixed argv
        subprocess.run(install, env=env, check=True)  # noqa: S603 - fixed argv
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"apt-get install {package} installed no {command}")
    return found
