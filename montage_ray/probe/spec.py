"""The spec that serves a resource label on this node: the encoders config first, else the node's probe.

An encoder actor calls :func:`resolve_spec` where it runs, so that a ``vaapi`` label is served by *this*
node's working device and driver (:func:`~montage_ray.probe.node.probe_node`, cached), a stand-in label by
the CPU backend it names, and a passthrough label by stream copy::

    from montage_ray.encoders.config import load_encoders_config
    from montage_ray.probe.spec import resolve_spec

    config = load_encoders_config("encoders.yaml")
    spec = resolve_spec("vaapi", config.get("vaapi"), codec="h264", quality=23, preset="medium", threads=1)
"""

from __future__ import annotations

from dataclasses import replace

from montage_ray.encoders.backends import BACKENDS, PASSTHROUGH, PASSTHROUGH_LABEL, SOFTWARE, EncoderSpec, backend_of
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import EncoderError
from montage_ray.probe.node import probe_node


def resolve_spec(label: str, config: LabelConfig | None, *, codec: str, quality: int, preset: str,
                 threads: int) -> EncoderSpec:
    """The spec that serves ``label`` on *this* node (call it where the encoder runs)."""
    backend = backend_of(label, config.backend if config else None)
    preset = (config.preset if config and config.preset else None) or preset
    threads = (config.threads if config and config.threads else None) or threads
    software = not BACKENDS[backend].hardware
    if config and config.standin and not software:
        raise EncoderError(f"label {label!r}: a stand-in must use the {SOFTWARE} backend, not {backend!r}")
    if config and config.passthrough:
        spec = replace(PASSTHROUGH.spec(codec, threads=threads, standin_for=label), copies=True,
                       label=PASSTHROUGH_LABEL.format(label=label))
    elif software:
        spec = BACKENDS[backend].spec(codec, quality=quality, preset=preset, threads=threads,
                                      standin_for=label if label != backend else None)
    else:
        spec = probe_node().spec(backend, codec, quality=quality, preset=preset, threads=threads)
        if label != backend:
            spec = replace(spec, resource=label)
    if config is None:
        return spec
    extra_input: tuple[str, ...] = ()
    details = []
    if config.preset:
        details.append(config.preset)
    if config.extra_args:
        details.append(" ".join(config.extra_args))
    if config.readrate:
        extra_input = ("-readrate", f"{config.readrate:g}")
        details.append(f"at most {config.readrate:g}x realtime")
    label_text = spec.label + (f" [{', '.join(details)}]" if details else "")
    return replace(spec, input_args=extra_input + spec.input_args, codec_args=spec.codec_args + config.extra_args,
                   label=label_text)
