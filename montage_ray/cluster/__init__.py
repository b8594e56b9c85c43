"""The Ray side of montage-ray: what the cluster offers, the encoder actors, who holds them, the pool.

- :mod:`~montage_ray.cluster.nodes`: pure reading of ``ray.nodes()``: placements, labels, offers for routing.
- :mod:`~montage_ray.cluster.actor`: :class:`EncoderActor`, one encode session pinned to a node and label.
- :mod:`~montage_ray.cluster.workers`: :class:`WorkerRegistry`, starting, reusing, replacing, stopping actors.
- :mod:`~montage_ray.cluster.pool`: :class:`EncoderPool`, feeding segments to the actors (retries, tails).
- :mod:`~montage_ray.cluster.session`: connecting to Ray, or starting a private one on 127.0.0.1.

A job uses them in that order::

    with ray_session(address) as session:
        workers = session.registry.start(placements(ray.nodes(), labels={"cpu"}), config={})
        ready, _ = session.registry.wait_ready(workers, settings)
        for segment, result, data in EncoderPool(ready, registry=session.registry).run(segments, ...):
            ...
"""
