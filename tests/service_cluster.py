"""A simulated cluster in a process of its own (the test process never imports Ray), for the tests whose
drivers are processes of their own; prints the address, then runs until its stdin closes.

    python tests/service_cluster.py CONFIG_YAML READRATE     the service tests': a head with one CPU slot and
                                                              a node with one ``vaapi`` slot, served by a CPU
                                                              stand-in (CONFIG_YAML written here)
    python tests/service_cluster.py --simulated CONTROL      scripts/simulate_cluster.py's mixed cluster, for
                                                              its jobs run with --address (and --control CONTROL)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from simulate_cluster import DEFAULT_LAYOUT, serve, write_config  # noqa: E402  (sets Ray's env first)


def main() -> None:
    if sys.argv[1] == "--simulated":
        serve(DEFAULT_LAYOUT, head_cpus=1, control=sys.argv[2])
        return
    config, readrate = sys.argv[1], float(sys.argv[2])
    layout = {"vaapi": ({"vaapi": 1}, {"backend": "cpu", "standin": True, "readrate": readrate,
                                      "preset": "ultrafast"})}
    write_config(layout, {"readrate": readrate, "preset": "ultrafast"}, config)
    serve(layout, head_cpus=1)


if __name__ == "__main__":
    main()
