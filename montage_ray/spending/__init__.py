"""Spending: what paid labels cost, what was spent, what a provider refused, and who takes part in a job.

- :mod:`~montage_ray.spending.providers`: the provider table: how a provider's nodes are marked, its
  refusal texts, its back-off and how it bills transfer.
- :mod:`~montage_ray.spending.cost`: pure pricing functions.
- :mod:`~montage_ray.spending.ledger`: the month's spending, shared by every driver.
- :mod:`~montage_ray.spending.quota`: a provider's refusals (quota, rate limit) and back-offs.
- :mod:`~montage_ray.spending.budget`: a job's view of the budget before routing and its bill after.
- :mod:`~montage_ray.spending.routing`: which labels take part, and why the others do not.

A new cloud provider is a row of :data:`~montage_ray.spending.providers.PROVIDERS`; its labels' prices go
into the encoders config (``provider:``, ``cost_per_hour``, ...).
"""
