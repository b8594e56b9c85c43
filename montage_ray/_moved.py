"""Old import paths of the modules that moved into the layer packages, kept for one release.

``import montage_ray.config`` (or ``from montage_ray.routing import route``) still works: a finder on
:data:`sys.meta_path` answers an old name with the module at its new place (the same module object, so
``montage_ray.config is montage_ray.encoders.config``) and a :class:`DeprecationWarning` naming the new path.
Nothing in montage-ray itself uses these names; ``tests/test_layers.py`` keeps it so.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module (under ``montage_ray.``) -> its place now
MOVED = {
    "ffmpeg_cli": "ffmpeg.tool", "caps": "ffmpeg.caps", "commands": "ffmpeg.commands",
    "files": "util.files", "workdirs": "util.workdirs", "metrics": "util.metrics",
    "plan": "media.plan", "split": "media.cut", "join": "media.join",
    "backends": "encoders.backends", "config": "encoders.config", "segment_encode": "encoders.segment",
    "hdr": "encoders.hdr", "quality": "encoders.quality",
    "cost": "spending.cost", "ledger": "spending.ledger", "quota": "spending.quota",
    "budget": "spending.budget", "routing": "spending.routing",
    "options": "job.options", "report": "job.report", "progress": "job.progress",
    "timeline": "job.timeline", "cache": "job.cache",
}
#: old modules that became packages of the same name: their names now live in this module of the package
BECAME_PACKAGES = {"media": "media.info", "job": "job.run"}


def moved_name(package: str, name: str, stacklevel: int = 3) -> object:
    """``getattr`` of a package that was a module: an old name, found in the module it moved to."""
    old = package.rsplit(".", 1)[-1]
    new = "montage_ray." + BECAME_PACKAGES[old]
    module = importlib.import_module(new)
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    warnings.warn(f"{package}.{name} moved to {new}.{name}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=stacklevel)
    setattr(sys.modules[package], name, value)   # warned once; ``from ... import`` asks twice
    return value


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - the finder protocol
        prefix, _, old = fullname.partition("montage_ray.")
        if prefix or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: ANN001
        return None

    def exec_module(self, module) -> None:  # noqa: ANN001
        old = module.__name__
        new = "montage_ray." + MOVED[old.removeprefix("montage_ray.")]
        warnings.warn(f"{old} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        sys.modules[old] = importlib.import_module(new)   # the import system returns what is here now


def install() -> None:
    """Answer the old module names (once per process)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())   # before any finder that might still see an old file
