"""What can this node encode with, honestly, and why not the rest.

A node's probe runs three stages for every backend of :data:`~montage_ray.encoders.backends.BACKENDS`, each ffmpeg
run under a hard timeout (a hung driver never hangs the node):

1. **build**: is the backend's encoder in ``ffmpeg -encoders``? And what can this ffmpeg do
   (:class:`~montage_ray.ffmpeg.caps.FFmpegCaps`: version, option spellings, bitstream filters)?
2. **device**: render nodes (``/dev/dri/renderD*``: present, openable by this user, whose GPU vendor),
   NVIDIA nodes, the Jetson markers, V4L2 mem2mem nodes (:mod:`montage_ray.probe.devices`).
3. **function**: a real tiny encode (a few 256x144 frames) through *exactly* the command production runs
   (:func:`montage_ray.ffmpeg.commands.encode_command`, spelt for this node's ffmpeg). VAAPI tries every render
   node x ``LIBVA_DRIVER_NAME`` pair and remembers the working pair *in the backend's status* (the process
   environment is never touched); QSV is derived from the Intel node.

Every unavailable backend carries a ``cause`` from :data:`CAUSES` and a ``fix`` sentence; an ffmpeg that
needed other spellings says so as ``ffmpeg-version`` notes (:meth:`NodeProbe.ffmpeg_diagnoses`)::

    from montage_ray.probe import probe_node

    node = probe_node()                   # cached for the life of the process; refresh=True probes again
    node.backends["vaapi"].available      # False
    node.backends["vaapi"].cause          # 'no-device'
    node.caps.passthrough                 # ('-vsync', 'passthrough') on ffmpeg 4.2
    node.ray_resources()                  # {'vaapi': 1} where VAAPI works; {} on a CPU-only node
    spec = node.spec("cpu", "h264", quality=23, preset="fast", threads=2)

:func:`explain` is the diagnosis alone, a pure function of an ffmpeg stderr (the table is
:data:`DIAGNOSES`, in :mod:`montage_ray.probe.diagnose`)::

    from montage_ray.probe import explain

    explain("[h264_nvenc @ 0x5586] Cannot load libcuda.so.1").cause    # 'driver-missing'

The package: :mod:`.node` (the staged probe), :mod:`.diagnose` (pattern table, ``explain``),
:mod:`.devices` (device discovery), :mod:`.story` (the human account, vainfo for VAAPI/QSV).
"""

from montage_ray.probe.devices import DeviceNode, device_nodes, find_library, find_va_driver
from montage_ray.probe.diagnose import (CAUSES, DIAGNOSES, Diagnosis, Pattern, explain, explain_log,
                                        guess_backend)
from montage_ray.probe.node import (DEFAULT_TIMEOUT, NODE_LABEL_KEY, TEST_FRAMES, TEST_SIZE, TEST_VIDEO, Attempt,
                                    BackendStatus, NodeProbe, build_encoders, clear_cache, make_test_clip,
                                    probe_node, production_command, run_probe, try_encode)
from montage_ray.probe.story import story, vainfo_report

__all__ = ["CAUSES", "DIAGNOSES", "DEFAULT_TIMEOUT", "NODE_LABEL_KEY", "TEST_FRAMES", "TEST_SIZE", "TEST_VIDEO",
           "Attempt", "BackendStatus", "DeviceNode", "Diagnosis", "NodeProbe", "Pattern", "build_encoders",
           "clear_cache", "device_nodes", "explain", "explain_log", "find_library", "find_va_driver",
           "guess_backend", "make_test_clip", "probe_node", "production_command", "run_probe", "story",
           "try_encode", "vainfo_report"]
