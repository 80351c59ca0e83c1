"""Prefect settings Graft needs, applied (as defaults the user can override) before prefect loads.

Import this module before `prefect` in every module that uses Prefect.
"""

import os

# No network here or on many users' boxes: Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary (ephemeral) server takes ~10 s to start on an idle 2-core box and more under
# load; Prefect's 20 s default fails stages that would have run fine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
