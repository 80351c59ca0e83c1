"""The whole Graft pipeline as one Prefect flow: `python flows/pipeline.py [ROOT]`.

The seven stage flows run in order as subflows of `pipeline` (graft.flows); `graft run` is the
same thing with a summary at the end. `dvc repro` runs the same stage flows one process each.
"""

from __future__ import annotations

import sys

from graft.flows import pipeline

if __name__ == "__main__":
    pipeline(root=sys.argv[1] if len(sys.argv) > 1 else ".")
