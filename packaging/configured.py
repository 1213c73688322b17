#!/usr/lib/mssendmail/venv/bin/python -I
"""ExecCondition= of the packaged worker units: is a credential configured yet?

Exit 0 (start the worker) once /etc/mssendmail/.env names a credential or a
transport other than graph; exit 1 (systemd skips the start, the unit is not
"failed", nothing restarts) while it is the fresh install's empty file. A
config that does not even load exits 0 too: the worker then starts, says
what is wrong and exits 78, which its unit does not restart.
"""

import sys

CREDENTIAL_KEYS = (
    "CLIENT_SECRET",
    "CLIENT_CERTIFICATE",
    "FEDERATED_TOKEN_FILE",
    "MANAGED_IDENTITY",
)

try:
    from mssendmail import config

    cfg = config.load(None)
    ready = cfg.get("TRANSPORT") != "graph" or any(cfg.get(k) for k in CREDENTIAL_KEYS)
except Exception:
    ready = True
if not ready:
    print(
        "mssendmail-worker: no credential in /etc/mssendmail/.env yet, so not starting; "
        "set one (see mssendmail.env.example there), then: systemctl restart mssendmail-worker"
    )
sys.exit(0 if ready else 1)
