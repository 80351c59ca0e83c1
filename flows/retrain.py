"""Entry point of the Prefect deployment `graft-retrain` (the flow: graft.retrain_flow.retrain).

Two ways to run it on a schedule (docs/retraining.md):
- `prefect deploy --all` reads prefect.yaml (cron, parameters, concurrency limit 1) and a
  process worker runs it: `prefect worker start --pool graft`;
- `python flows/retrain.py` serves the same deployment from this process, no work pool needed.
"""

from __future__ import annotations

import os
import sys

from graft.retrain_flow import retrain

__all__ = ["retrain"]

CRON = os.environ.get("GRAFT_RETRAIN_CRON", "0 3 * * *")  # daily at 03:00 UTC, as in prefect.yaml

if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    # limit=1: this process starts one run at a time; models/.lock guards against other processes.
    retrain.serve(name="graft-retrain", cron=CRON, parameters={"root": root}, limit=1,
                  description="Retrain on new images; promote only a better challenger.")
