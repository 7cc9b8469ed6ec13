"""``python -m serve.wait_ready``: wait until the deployed app serves, printing progress, not logs.

``scripts/run.sh`` deploys ``serve_config.yaml`` with ``serve deploy`` and then calls this, so the
person who started it sees one line per change of state (which deployment is starting, how many
replicas run) and then the URL, while Ray's own replica logs stay in its log folder. It reads the
dashboard's Serve REST API (loopback), the same source as ``serve status``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="cxr", help="the Serve application's name (default: %(default)s)")
    parser.add_argument(
        "--dashboard", default="http://127.0.0.1:8265", help="Ray dashboard address (default: %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up (default: %(default)s)")
    return parser


def app_state(dashboard: str, app: str) -> tuple[str, str, dict[str, str]]:
    """(application status, its message, {deployment: "STATUS running/target"}); NOT_STARTED while absent."""
    with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=10) as response:
        details = json.load(response).get("applications", {}).get(app)
    if not details:
        return "NOT_STARTED", "", {}
    deployments = {
        name: f"{d.get('status', '?')} {sum(1 for r in d.get('replicas', []) if r.get('state') == 'RUNNING')}"
        f"/{d.get('target_num_replicas', '?')}"
        for name, d in (details.get("deployments") or {}).items()
    }
    return details.get("status", "?"), details.get("message", ""), deployments


def wait_ready(dashboard: str, app: str, timeout: float) -> int:
    started, last = time.monotonic(), None
    while time.monotonic() - started < timeout:
        try:
            status, message, deployments = app_state(dashboard, app)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            status, message, deployments = "UNREACHABLE", str(exc), {}
        line = f"  {status}: " + (", ".join(f"{n} {s}" for n, s in deployments.items()) or "waiting")
        if line != last:
            print(f"[{time.monotonic() - started:5.0f} s]{line}", flush=True)
            last = line
        if status == "RUNNING":
            return 0
        if status == "DEPLOY_FAILED":
            print(f"Deploying failed: {message}", file=sys.stderr)
            return 1
        time.sleep(2)
    print(
        f"Not ready after {timeout:.0f} s; see `serve status` and /tmp/ray/session_latest/logs/serve/", file=sys.stderr
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return wait_ready(args.dashboard, args.app, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
