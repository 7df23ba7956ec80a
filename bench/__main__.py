"""`python -m bench [--only NAME,...] [--rounds N] [--workers 1,2]`: run the benchmarks, print and save the table.

Results go to `bench/results/last.json` and `bench/results/last.md` (the table the README
quotes). Everything runs on 127.0.0.1 and unix sockets, against processes this run starts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from pathlib import Path

from bench.common import Results, fmt, log, machine

BENCHES = ("routing", "tail", "scaling", "state", "broker", "fairness", "backlog", "sealing", "updates")
OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; medians are reported")
    parser.add_argument("--users", type=int, default=100_000, help="synthetic users for the state benchmark")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the gateway")
    parser.add_argument(
        "--ingress",
        choices=("telegram", "core"),
        default="telegram",
        help="routing, tail, scaling: through the Telegram webhook, or a bench-only route into services.handoff",
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        help="scaling: comma-separated process counts (serve --workers N) to compare; the first is the baseline",
    )
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    import uvloop

    uvloop.install()
    results = Results(machine())
    m = results.machine
    log(
        f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}, Redis {m['redis']}, "
        f"load {', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])}"
    )
    failed = []
    for name in chosen:
        began = time.monotonic()
        log(f"=== {name}")
        module = importlib.import_module(f"bench.{name}")
        try:
            asyncio.run(module.run(results, **_options(name, args)))
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            results.note(name, f"failed: {type(exc).__name__}: {exc}")
            failed.append(name)
        log(f"=== {name} took {time.monotonic() - began:.0f} s")
    OUT.mkdir(exist_ok=True)
    results.save(OUT / "last.json")
    table = results.table()
    notes = "\n".join(f"- **{b}**: {n}" for b, ns in results.notes.items() for n in ns if b != "routing-profile")
    profile = "\n".join(results.notes.get("routing-profile", []))
    load_end = ", ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    (OUT / "last.md").write_text(
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Redis {m['redis']}; load average {', '.join(fmt(x) for x in m['loadavg_at_start'])} at start, "
        f"{load_end} at end; {args.rounds} round(s), medians.\n\n{table}\n\n{notes}\n"
        + (f"\nGateway profile (py-spy):\n\n```\n{profile}\n```\n" if profile else "")
    )
    print(table)
    print(f"\nsaved {OUT / 'last.md'} and {OUT / 'last.json'}")
    return 1 if failed else 0


def _options(name: str, args: argparse.Namespace) -> dict[str, object]:
    if name == "routing":
        return {"rounds": args.rounds, "ingress": args.ingress, "profile_seconds": 0.0 if args.no_profile else 6.0}
    if name == "tail":
        return {"rounds": args.rounds, "ingress": args.ingress}
    if name == "scaling":
        workers = tuple(int(n) for n in args.workers.split(",") if n.strip())
        return {"rounds": args.rounds, "ingress": args.ingress, "workers": workers}
    if name == "state":
        return {"users": args.users}
    return {"rounds": args.rounds}


if __name__ == "__main__":
    sys.exit(main())
