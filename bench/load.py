"""Headless load ramp against a running CXR Serve, with a report and a plot.

    .venv/bin/python bench/load.py --host http://127.0.0.1:8000 --users 1,4,16,32 --step-seconds 30 --out runs/load

Runs bench/locustfile.py's mix as a closed loop (no think time) at each user count in turn, for a
bounded time per step, and writes report.json, report.md and load.png (throughput, p50/p95/p99,
error rate per step) to --out. Only loopback hosts unless --allow-remote: a load test aimed at
the wrong URL is an outage.
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
from locustfile import ReadingWorkstation  # noqa: E402

PERCENTILES = (0.5, 0.95, 0.99)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--users", default="1,4,16,32", help="user counts, one step each")
    parser.add_argument("--step-seconds", type=float, default=30.0, help="measured time per step")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured time after each ramp-up")
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
    total["error_rate"] = stats.total.num_failures / stats.total.num_requests if stats.total.num_requests else 0.0
    uploads = sum(s.num_requests for (name, _), s in stats.entries.items() if name.startswith("predict"))
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
                f"errors {steps[-1]['total']['error_rate']:.1%}",
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
        "| users | images/s | requests/s | p50 ms | p95 ms | p99 ms | error rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        t = s["total"]
        lines.append(
            f"| {s['users']} | {s['images_per_s']:.2f} | {t['rps']:.2f} | {t['p50_ms']} | {t['p95_ms']} | "
            f"{t['p99_ms']} | {t['error_rate']:.2%} |"
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


def main(args) -> int:
    if not args.allow_remote and not is_loopback(args.host):
        print(f"refusing to load-test {args.host}: not loopback (pass --allow-remote if you mean it)", file=sys.stderr)
        return 2
    users = [int(u) for u in args.users.split(",")]
    steps = run_ramp(args.host, users, args.step_seconds, args.warmup_seconds)
    write_report(steps, Path(args.out), args.host)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 1 if any(s["total"]["error_rate"] > 0 for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
