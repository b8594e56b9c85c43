"""Device discovery: device nodes (who may open them, which GPU vendor and kernel driver), shared libraries
and VA drivers, read from the file system only (nothing runs)::

    from montage_ray.probe.devices import device_nodes, find_library

    [n.describe() for n in device_nodes(["/dev/dri/renderD*"])]
    find_library("libcuda.so.1")          # None on a machine without the NVIDIA driver

``root`` prefixes every path, so tests point it at a fake tree.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
from dataclasses import dataclass
from typing import Iterable, Sequence

#: PCI vendor ids of render nodes, and the VA drivers that serve each.
VENDORS = {"0x1002": "AMD", "0x8086": "Intel", "0x10de": "NVIDIA"}
VA_DRIVER_VENDOR = {"radeonsi": "0x1002", "iHD": "0x8086", "i965": "0x8086", "nvidia": "0x10de"}
VA_DRIVER_PACKAGE = {"radeonsi": "mesa-va-drivers", "iHD": "intel-media-va-driver-non-free",
                      "i965": "i965-va-driver"}

#: Where shared libraries and VA drivers are looked for (plus $LD_LIBRARY_PATH and $LIBVA_DRIVERS_PATH).
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu/tegra",
             "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/local/lib",
             "/usr/lib/wsl/lib", "/usr/local/cuda/lib64", "/opt/intel/media/lib64", "/opt/ffmpeg/lib")



@dataclass(frozen=True)
class DeviceNode:
    """A device node the device stage looked at."""

    path: str
    openable: bool                  # this user could open it read-write
    error: str = ""                 # why not (strerror)
    group: str | None = None        # its owning group
    vendor: str | None = None       # PCI vendor id of a render node (0x8086 = Intel)
    kernel_driver: str | None = None  # i915, xe, amdgpu, bcm2835-codec, ...
    name: str | None = None         # V4L2 card name, e.g. bcm2835-codec-encode

    def describe(self) -> str:
        bits = [self.path]
        if self.vendor:
            bits.append(f"{VENDORS.get(self.vendor, self.vendor)} ({self.vendor})")
        if self.kernel_driver:
            bits.append(f"kernel driver {self.kernel_driver}")
        if self.name:
            bits.append(self.name)
        if self.group:
            bits.append(f"group {self.group}")
        bits.append("openable" if self.openable else f"NOT openable: {self.error}")
        return ", ".join(bits)



def under(root: str, path: str) -> str:
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _open_check(path: str) -> tuple[bool, str]:
    """Can this user open ``path`` read-write? (What libva and V4L2 do; opening a node is harmless.)"""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        return False, err.strerror or str(err)
    os.close(fd)
    return True, ""


def _group_of(path: str) -> str | None:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def device_nodes(patterns: Iterable[str], *, root: str = "/", open_check: bool = True) -> list[DeviceNode]:
    """Device nodes matching the glob ``patterns`` (under ``root``), with who may open them and what they are."""
    seen: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(under(root, pattern))):
            if path not in seen:
                seen.append(path)
    nodes = []
    for path in seen:
        base = os.path.basename(path)
        vendor = kernel_driver = name = None
        if base.startswith("renderD") or base.startswith("card"):
            sys_dev = under(root, f"/sys/class/drm/{base}/device")
            vendor = read_text(os.path.join(sys_dev, "vendor"))
            link = os.path.join(sys_dev, "driver")
            kernel_driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        elif base.startswith("video"):
            name = read_text(under(root, f"/sys/class/video4linux/{base}/name"))
        ok, error = _open_check(path) if open_check else (os.access(path, os.R_OK | os.W_OK), "")
        if not ok and not error:
            error = "permission denied"
        nodes.append(DeviceNode(path, ok, error, _group_of(path), vendor, kernel_driver, name))
    return nodes


def _lib_dirs(root: str) -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for conf in sorted(glob.glob(under(root, "/etc/ld.so.conf.d/*.conf"))):
        for line in (read_text(conf) or "").splitlines():
            line = line.strip()
            if line.startswith("/"):
                dirs.append(under(root, line))
    dirs += [under(root, d) for d in _LIB_DIRS]
    return list(dict.fromkeys(dirs))


def find_library(name: str, *, root: str = "/") -> str | None:
    """Path of shared library ``name`` (e.g. ``libcuda.so.1``) in the usual places, or None."""
    for directory in _lib_dirs(root):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    return None


def find_va_driver(driver: str, *, root: str = "/") -> str | None:
    """Path of the VA driver ``driver`` (``iHD`` -> ``.../dri/iHD_drv_video.so``), or None."""
    dirs = [d for d in os.environ.get("LIBVA_DRIVERS_PATH", "").split(":") if d]
    dirs += [os.path.join(d, "dri") for d in _lib_dirs(root)]
    for directory in dict.fromkeys(dirs):
        candidate = os.path.join(directory, f"{driver}_drv_video.so")
        if os.path.exists(candidate):
            return candidate
    return None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def permission_fix(nodes: Sequence[DeviceNode]) -> str:
    node = nodes[0]
    if node.group and node.group != "root":
        return (f"{node.path} belongs to group '{node.group}' and user '{_user()}' cannot open it "
                f"({node.error}): sudo usermod -aG {node.group} {_user()} and log in again; in Docker add "
                f"--group-add $(getent group {node.group} | cut -d: -f3), in Kubernetes supplementalGroups.")
    return (f"user '{_user()}' cannot open {node.path} ({node.error}): give the node a group this user is "
            "in (a udev rule, or the container's --device / device plugin) and probe again.")

