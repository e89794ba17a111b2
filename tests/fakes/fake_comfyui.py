"""Run the ComfyUI stand-in: ``python tests/fakes/fake_comfyui.py --listen HOST --port PORT``.

Takes ComfyUI's own flags (``--output-directory``, ``--input-directory``, ``--temp-directory``,
``--disable-metadata``; any other ComfyUI flag is accepted and ignored) and the stand-in's:
``--startup-delay SECONDS``, ``--never-ready``, ``--fault {none,drop-socket,die,stall}``,
``--fault-after-node N``, ``--step-seconds S`` (RylaSlowSteps default), ``--node-seconds S``
(every node sleeps this long, to make a model-free graph slow like transcript 14's).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: make ``tests.fakes.comfyui`` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fakes.comfyui.server import main

    main()
