"""``cxr gateway``: the DICOM gateway between the PACS and the service, and ``cxr gateway status``.

    cxr gateway --ae-title CXR_AI --port 11112 --allow-ae PACS_MAIN --service-url http://cxr:8000 \\
        --api-key-file /run/secrets/cxr-api-key --spool /var/spool/cxr-gateway
    cxr gateway status --spool /var/spool/cxr-gateway

Every flag's default comes from ``CXR_GATEWAY_*`` (``GatewaySettings``), else the built-in one.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import asdict
from pathlib import Path

from gateway.settings import GatewaySettings


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GatewaySettings()
    flag = parser.add_argument
    flag(
        "action",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run the gateway, or show its spool (default: %(default)s)",
    )
    flag("--ae-title", default=defaults.ae_title, help="this gateway's AE title (default: %(default)s)")
    flag("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    flag("--port", type=int, default=defaults.port, help="DICOM port (default: %(default)s)")
    flag(
        "--allow-ae",
        action="append",
        default=None,
        help=f"a calling AE title allowed to send, repeatable; all others are refused (default: {defaults.allow_ae})",
    )
    flag("--service-url", default=defaults.service_url, help="the CXR Serve base URL (default: %(default)s)")
    flag(
        "--api-key-file",
        default=defaults.api_key_file,
        help="file holding the API key the gateway sends (default: %(default)s, for a service without auth)",
    )
    flag(
        "--send-to",
        action="append",
        default=None,
        help="AE@host:port to C-STORE each result (the SR) to, repeatable "
        f"(default: {defaults.send_to or 'none, results stay in the service'})",
    )
    flag(
        "--stow-to",
        action="append",
        default=None,
        help="DICOMweb root URL to STOW-RS each result (the SR) to, e.g. http://pacs:8042/dicom-web, repeatable "
        f"(default: {defaults.stow_to or 'none'})",
    )
    flag(
        "--secondary-capture",
        action=argparse.BooleanOptionalAction,
        default=defaults.secondary_capture,
        help="also send the annotated image as a Secondary Capture, for viewers without SR display "
        "(default: %(default)s)",
    )
    flag(
        "--claim-stow-results",
        action=argparse.BooleanOptionalAction,
        default=defaults.claim_stow_results,
        help="also deliver the results of instances the service received by STOW-RS, claimed from it "
        "(the key's role must be gateway; only with --send-to or --stow-to) (default: %(default)s)",
    )
    flag(
        "--metrics-port",
        type=int,
        default=defaults.metrics_port,
        help="serve Prometheus metrics on this port, on --host (default: %(default)s, not served)",
    )
    flag("--spool", default=defaults.spool, help="spool folder, on durable storage (default: %(default)s)")
    flag(
        "--max-spool-bytes",
        type=int,
        default=defaults.max_spool_bytes,
        help="above this, C-STOREs are answered Out of Resources (default: %(default)s)",
    )


def register_gateway(subparsers) -> None:
    parser = subparsers.add_parser("gateway", help="the DICOM gateway: receive from the PACS, submit to the service")
    add_gateway_arguments(parser)
    parser.set_defaults(func=_gateway)


def _run(args, settings: GatewaySettings) -> int:
    from gateway.delivery import make_sender, outboxes, parse_destinations, run_senders
    from gateway.due_results import DueResults
    from gateway.forwarder import Backoff, Forwarder
    from gateway.scp import build_ae, start_scp
    from gateway.spool import Spool

    spool = Spool(args.spool, args.max_spool_bytes)
    api_key = Path(args.api_key_file).read_text().strip() if args.api_key_file else None
    backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
    destinations = parse_destinations(args.send_to or settings.send_to, args.stow_to or settings.stow_to)
    boxes = outboxes(Path(args.spool), destinations, args.max_spool_bytes)
    if args.metrics_port:
        serve_metrics(args.host, args.metrics_port, spool, boxes)
    ae = build_ae(args.ae_title, args.allow_ae or settings.allow_ae)
    server = start_scp(ae, args.host, args.port, spool)
    forwarder = Forwarder(spool, args.service_url, api_key, backoff, list(boxes.values()), args.secondary_capture)
    senders = [make_sender(args.ae_title, d, box, forwarder.report_delivery) for d, box in boxes.items()]
    workers = [threading.Thread(target=forwarder.run, name="forwarder", daemon=True)]
    workers.append(threading.Thread(target=run_senders, args=(senders, forwarder.stopped, backoff), daemon=True))
    if boxes and args.claim_stow_results:
        due = DueResults(forwarder, Path(args.spool) / "claimed", [d.label for d in boxes])
        claims = (forwarder.stopped, backoff, settings.claim_interval_s)
        workers.append(threading.Thread(target=due.run, args=claims, name="stow-results", daemon=True))
    for worker in workers:
        worker.start()
    print(f"{args.ae_title} listening on {args.host}:{args.port}; forwarding to {args.service_url}", flush=True)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    server.shutdown()  # no new instances; what is spooled stays for the next start
    forwarder.stop()
    for worker in workers:
        worker.join(timeout=30)
    return 0


def serve_metrics(host: str, port: int, spool, boxes: dict) -> None:
    from prometheus_client import REGISTRY, start_http_server

    from gateway.metrics import SpoolCollector

    REGISTRY.register(SpoolCollector(spool, {d.label: box for d, box in boxes.items()}))
    start_http_server(port, addr=host)


def _gateway(args) -> int:
    settings = GatewaySettings()
    if args.action == "status":
        from gateway.delivery import dead_letters
        from gateway.spool import Spool

        status = asdict(Spool(args.spool, args.max_spool_bytes).status())
        print(json.dumps(status | {"dead_letters": dead_letters(Path(args.spool))}, indent=2))
        return 0
    return _run(args, settings)
