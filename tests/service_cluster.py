"""A simulated cluster for the service tests, in a process of its own (the test process never imports Ray):
a head with one CPU slot and a node with one ``vaapi`` slot, served by a CPU stand-in. Prints the address,
then runs until its stdin closes.

    python tests/service_cluster.py CONFIG_YAML READRATE
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from simulate_cluster import start_cluster, write_config  # noqa: E402  (sets Ray's env first)


def main() -> None:
    config, readrate = sys.argv[1], float(sys.argv[2])
    layout = {"vaapi": ({"vaapi": 1}, {"backend": "cpu", "standin": True, "readrate": readrate,
                                      "preset": "ultrafast"})}
    write_config(layout, {"readrate": readrate, "preset": "ultrafast"}, config)
    cluster, _ = start_cluster(layout, head_cpus=1)
    print(cluster.address, flush=True)
    try:
        sys.stdin.read()
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
