"""Terminal simulator (load generator) for the one-card switch.

    .venv/bin/python terminals-sim/simulate.py --spawn --terminals 2000 --seconds 30
    .venv/bin/python terminals-sim/simulate.py --spawn --mode open --rate 3000 --seconds 60
    .venv/bin/python terminals-sim/simulate.py --spawn --scenario outage --seconds 30
    .venv/bin/python terminals-sim/simulate.py --connect 127.0.0.1:7000 --data /srv/switch

See terminals-sim/README.md.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (_HERE, os.path.dirname(_HERE)):   # onecard_sim/, and the repo root for switch/
    if _path not in sys.path:
        sys.path.insert(0, _path)

from onecard_sim.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
