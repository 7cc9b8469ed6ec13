"""Headless load test against a running CXR Serve, with a report and a plot.

    # closed loop: bench/locustfile.py's mix, N users back to back, one step per user count
    .venv/bin/python bench/load.py --host http://127.0.0.1:8000 --users 1,4,16,32 --step-seconds 30 --out runs/load
    # open loop: predictions arriving at fixed rates (Poisson), latency from the intended send time
    .venv/bin/python bench/load.py --mode open --rates 2,4,8,12 --p99-target-ms 2000 --out runs/load-open

The closed loop hides queueing delay (each user waits before sending again: coordinated omission);
the open loop shows it, and finds the highest rate served with p99 under --p99-target-ms. Both
count the service's deliberate 503/504 shedding apart from errors. Each step is bounded in time;
report.json, report.md and load.png go to --out. A cluster with authentication: CXR_API_KEY=<key
from `cxr keys create --rate-limit ...`>. Only loopback hosts unless --allow-remote: a load test
aimed at the wrong URL is an outage.
"""

from __future__ import annotations

import os

os.environ.setdefault("CXR_LOAD_THINK_S", "0")  # before the locustfile is imported

import argparse  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from locust.env import Environment  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from locustfile import RADIOGRAPHS, ReadingWorkstation  # noqa: E402

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real-sample"

PERCENTILES = (0.5, 0.95, 0.99)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--users", default="1,4,16,32", help="user counts, one step each")
    parser.add_argument("--step-seconds", type=float, default=30.0, help="measured time per step")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured time after each ramp-up")
    parser.add_argument("--mode", choices=("closed", "open"), default="closed", help="closed: users; open: rates")
    parser.add_argument("--rates", default="2,4,8", help="open loop: offered predictions per second, one step each")
    parser.add_argument("--p99-target-ms", type=float, default=2000.0, help="open loop: the latency goal")
    parser.add_argument("--max-in-flight", type=int, default=256, help="open loop: outstanding requests at most")
    parser.add_argument("--out", default="runs/load")
    parser.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --host")
    return parser


def is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(host).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(name, None))
    except (socket.gaierror, ValueError):
        return False


def snapshot(stats, users: int, seconds: float) -> dict:
    def entry(s) -> dict:
        return {
            "requests": s.num_requests,
            "failures": s.num_failures,
            "rps": s.num_requests / seconds if seconds else 0.0,
            **{
                f"p{int(q * 100)}_ms": s.get_response_time_percentile(q) if s.num_requests else None
                for q in PERCENTILES
            },
        }

    total = entry(stats.total)
    uploads = sum(s.num_requests for (name, _), s in stats.entries.items() if name.startswith("predict"))
    # Deliberate shedding (503/504 with Retry-After) is the service protecting itself, not a fault.
    shed = sum(e.occurrences for e in stats.errors.values() if any(f"{c} " in str(e.error) for c in (503, 504)))
    total["shed_503_504"] = shed
    total["error_rate"] = (
        (stats.total.num_failures - shed) / stats.total.num_requests if stats.total.num_requests else 0.0
    )
    return {
        "users": users,
        "seconds": seconds,
        "images_per_s": uploads / seconds if seconds else 0.0,
        "total": total,
        "endpoints": {name: entry(s) for (name, _), s in sorted(stats.entries.items())},
        "errors": [{"name": e.name, "error": str(e.error), "count": e.occurrences} for e in stats.errors.values()],
    }


def run_ramp(host: str, users: list[int], step_seconds: float, warmup_seconds: float) -> list[dict]:
    env = Environment(user_classes=[ReadingWorkstation], host=host)
    runner = env.create_local_runner()
    steps = []
    try:
        for count in users:
            runner.start(count, spawn_rate=max(count, 1))
            gevent.sleep(warmup_seconds)
            env.stats.reset_all()
            started = time.monotonic()
            gevent.sleep(step_seconds)
            steps.append(snapshot(env.stats, count, time.monotonic() - started))
            print(
                f"{count:4d} users: {steps[-1]['images_per_s']:6.2f} images/s  "
                f"p50 {steps[-1]['total']['p50_ms']} ms  p99 {steps[-1]['total']['p99_ms']} ms  "
                f"errors {steps[-1]['total']['error_rate']:.1%}  shed (503/504) {steps[-1]['total']['shed_503_504']}",
                flush=True,
            )
    finally:
        runner.quit()
    return steps


def write_report(steps: list[dict], out: Path, host: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"host": host, "steps": steps}, indent=2))
    lines = [
        f"# Load ramp against {host}",
        "",
        "| users | images/s | requests/s | p50 ms | p95 ms | p99 ms | error rate | shed (503/504) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        t = s["total"]
        lines.append(
            f"| {s['users']} | {s['images_per_s']:.2f} | {t['rps']:.2f} | {t['p50_ms']} | {t['p95_ms']} | "
            f"{t['p99_ms']} | {t['error_rate']:.2%} | {t['shed_503_504']} |"
        )
    lines += [
        "",
        "Per endpoint at the highest step:",
        "",
        "| endpoint | requests | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, e in steps[-1]["endpoints"].items():
        lines.append(f"| {name} | {e['requests']} | {e['p50_ms']} | {e['p95_ms']} | {e['p99_ms']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")

    users = [s["users"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(users, [s["images_per_s"] for s in steps], marker="o", label="images/s")
    left.plot(users, [s["total"]["rps"] for s in steps], marker="s", label="requests/s")
    left.set_xlabel("concurrent users")
    left.set_ylabel("per second")
    left.legend()
    left.grid(alpha=0.3)
    for q in PERCENTILES:
        key = f"p{int(q * 100)}_ms"
        right.plot(users, [s["total"][key] or 0 for s in steps], marker="o", label=key.replace("_ms", ""))
    errors = right.twinx()
    errors.bar(users, [s["total"]["error_rate"] * 100 for s in steps], alpha=0.2, color="red", width=0.8)
    errors.set_ylabel("errors %")
    right.set_xlabel("concurrent users")
    right.set_ylabel("latency ms")
    right.legend(loc="upper left")
    right.grid(alpha=0.3)
    fig.suptitle(f"CXR Serve load ramp ({host})")
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)
    plt.close(fig)


def open_loop_images(count: int = 32) -> list[bytes]:
    """Real radiographs when the shared sample is here, else the locustfile's generated ones."""
    if REAL_SAMPLE.is_dir():
        paths = sorted(REAL_SAMPLE.glob("*/images/*.png"))
        return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]
    return RADIOGRAPHS


def run_open(args) -> int:
    from http_load import single_image_requests
    from open_loop import highest_rate_within, run_rates

    url = args.host.rstrip("/") + "/api/v1/predictions"
    key = os.environ.get("CXR_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    requests = single_image_requests(url, open_loop_images(), {"patient_id": "MRN00000001"}, headers)
    rates = [float(r) for r in args.rates.split(",")]
    steps = run_rates(url, requests, rates, args.step_seconds, args.warmup_seconds, args.max_in_flight)
    best = highest_rate_within(steps, args.p99_target_ms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [s.summary() for s in steps]
    report = {"host": args.host, "mode": "open", "p99_target_ms": args.p99_target_ms, "highest_rate": best}
    (out / "report.json").write_text(json.dumps({**report, "steps": summaries}, indent=2))
    write_open_report(summaries, out, args.host, args.p99_target_ms, best)
    verdict = f"{best:g} req/s" if best is not None else "none of the rates"
    print(f"highest rate served with p99 <= {args.p99_target_ms:g} ms and nothing shed or failed: {verdict}")
    print(f"report: {out / 'report.md'}")
    return 0


def write_open_report(steps: list[dict], out: Path, host: str, target: float, best: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"# Open-loop load against {host}",
        "",
        f"Highest rate with p99 <= {target:g} ms, nothing shed or failed: {best if best is not None else 'none'}",
        "",
        "| offered/s | OK/s | p50 ms | p95 ms | p99 ms | shed (503/504) | errors | not sent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        ms = [f"{s[k]:.0f}" if s[k] is not None else "n/a" for k in ("p50_ms", "p95_ms", "p99_ms")]
        lines.append(
            f"| {s['offered_per_s']:g} | {s['achieved_per_s']:.2f} | {' | '.join(ms)} | {s['shed_503_504']} | "
            f"{s['errors']} | {s['not_sent']} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    rates = [s["offered_per_s"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(rates, [s["achieved_per_s"] for s in steps], marker="o", label="OK/s")
    left.plot(rates, rates, linestyle=":", color="grey", label="offered")
    left.set_xlabel("offered requests/s")
    left.legend()
    left.grid(alpha=0.3)
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(rates, [s[key] or 0 for s in steps], marker="o", label=key.replace("_ms", ""))
    right.axhline(target, color="red", linestyle="--", label="p99 target")
    right.set_xlabel("offered requests/s")
    right.set_ylabel("latency from intended send, ms")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle(f"CXR Serve open-loop load ({host})")
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)
    plt.close(fig)


def main(args) -> int:
    if not args.allow_remote and not is_loopback(args.host):
        print(f"refusing to load-test {args.host}: not loopback (pass --allow-remote if you mean it)", file=sys.stderr)
        return 2
    if args.mode == "open":
        return run_open(args)
    users = [int(u) for u in args.users.split(",")]
    steps = run_ramp(args.host, users, args.step_seconds, args.warmup_seconds)
    write_report(steps, Path(args.out), args.host)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 1 if any(s["total"]["error_rate"] > 0 for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
