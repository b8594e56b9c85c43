"""The Ray side of montage-ray: what the cluster offers, the encoder actors, who holds them, the pool.

- :mod:`~montage_ray.cluster.nodes`: pure reading of ``ray.nodes()``: placements, labels, offers for routing.
- :mod:`~montage_ray.cluster.actor`: :class:`EncoderActor`, one encode session pinned to a node and label.
- :mod:`~montage_ray.cluster.workers`: :class:`WorkerRegistry`, a private Ray's actors: start, reuse, replace, stop.
- :mod:`~montage_ray.cluster.service`: the encoder service of a shared Ray: detached actors per slot for every
  driver, a job's lease at the scheduler, ``status`` and ``stop``.
- :mod:`~montage_ray.cluster.scheduler`: the service's scheduler: tickets per actor, priority, fair share.
- :mod:`~montage_ray.cluster.pool`: :class:`EncoderPool`, feeding segments to the actors (retries, tails).
- :mod:`~montage_ray.cluster.session`: connecting to Ray, or starting a private one on 127.0.0.1.

A job on a private Ray uses them in this order (on a shared Ray ``session.service`` starts the actors and the
pool gets ``gate=session.service.lease(job_id)``)::

    with ray_session(address) as session:
        workers = session.registry.start(placements(ray.nodes(), labels={"cpu"}), config={})
        ready, _ = session.registry.wait_ready(workers, settings)
        for segment, result, data in EncoderPool(ready, registry=session.registry).run(segments, ...):
            ...
"""
