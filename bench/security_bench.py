"""Throughput and p50 of the `simple` model with auth + TLS against plain, in the same run.

Two servers (plain on loopback; API key + TLS), perf_analyzer in alternating rounds so both see
the same machine noise, keep-alive connections (perf_analyzer's default). Prints a markdown
table for docs/benchmarks.md: per protocol and concurrency, the median of the rounds and the
secured / plain ratio.
"""
import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import BINARY, Server, copy_repo  # noqa: E402
from test_tls import make_pki  # noqa: E402


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def perf(url, proto, c, window, extra, pid):
    """Throughput, p50 and the server's CPU µs per request over one perf_analyzer run."""
    before, t0 = cpu_seconds(pid), time.perf_counter()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = ["perf_analyzer", "-m", "simple", "-u", url, "-i", proto, "--concurrency-range", f"{c}:{c}",
               "--measurement-interval", str(window), "--stability-percentage", "999", "--max-trials", "3",
               "-f", f.name, *extra]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"perf_analyzer failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        row = next(csv.DictReader(open(f.name)))
    # Warm-up and every trial ran at about the measured rate: requests over the whole run.
    served = float(row["Inferences/Second"]) * (time.perf_counter() - t0)
    cpu_us = (cpu_seconds(pid) - before) * 1e6 / max(served, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_us = ((after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)) * 1e6 / max(served, 1)
    return float(row["Inferences/Second"]), int(row["p50 latency"]), cpu_us, client_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window-ms", type=int, default=3000)
    ap.add_argument("--concurrency", default="1,16", help="comma list, e.g. 16")
    ap.add_argument("--protocols", default="grpc,http")
    ap.add_argument("--baseline-flags", default="",
                    help="also run a plain server with these serve flags, e.g. "
                         "'--grpc-infer-response-compression-level high' (the old default), as a reference")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = args.protocols.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_pki(d)
        keys = d / "keys.toml"
        key = subprocess.run([str(BINARY), "keys", "create", "--file", str(keys), "--id", "bench", "--role", "infer"],
                             capture_output=True, text=True, check=True).stdout.strip()
        plain = Server(copy_repo(d, "plain"))
        secure = Server(copy_repo(d, "secure"), "--auth-keys", str(keys), "--tls-cert", str(d / "server.pem"),
                        "--tls-key", str(d / "server.key"), ca=d / "ca.pem")
        keyed = Server(copy_repo(d, "keyed"), "--auth-keys", str(keys))
        base = Server(copy_repo(d, "base"), *args.baseline_flags.split()) if args.baseline_flags else None
        header = ["-H", f"authorization:Bearer {key}"]
        setups = {
            ("grpc", "plain"): (plain.grpc, []),
            ("grpc", "auth"): (keyed.grpc, header),
            ("grpc", "auth+TLS"): (secure.grpc, ["--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file",
                                                 str(d / "ca.pem"), *header]),
            ("http", "plain"): (plain.http, []),
            ("http", "auth"): (keyed.http, header),
            ("http", "auth+TLS"): (f"https://{secure.http}", ["--ssl-https-ca-certificates-file", str(d / "ca.pem"),
                                                              "--ssl-https-verify-peer", "1",
                                                              "--ssl-https-verify-host", "0", *header]),
        }
        if base:
            setups[("grpc", "baseline")] = (base.grpc, [])
            setups[("http", "baseline")] = (base.http, [])
        kinds = [("plain", plain), ("auth", keyed), ("auth+TLS", secure)] + ([("baseline", base)] if base else [])
        results = {}
        try:
            for r in range(args.rounds):
                for proto in protocols:
                    for c in levels:
                        for kind, server in kinds:
                            url, extra = setups[(proto, kind)]
                            results.setdefault((proto, c, kind), []).append(
                                perf(url, proto, c, args.window_ms, extra, server.proc.pid))
                print(f"round {r + 1} done", file=sys.stderr, flush=True)
        finally:
            plain.stop()
            secure.stop()
            keyed.stop()
            if base:
                base.stop()
    print("| protocol | concurrency | plain infer/s | auth infer/s (ratio) | auth+TLS infer/s (ratio) | auth+TLS / plain per round (median, min–max) | p50 µs plain / auth / auth+TLS | server CPU µs per request plain / auth / auth+TLS | perf_analyzer CPU µs per request plain / auth / auth+TLS |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = lambda rs, i: statistics.median(x[i] for x in rs)  # noqa: E731
    for proto in protocols:
        for c in levels:
            p, a, s = (results[(proto, c, k)] for k in ("plain", "auth", "auth+TLS"))
            pt = med(p, 0)
            # Each round measured plain and auth+TLS back to back: their ratio sees the
            # same machine noise, unlike the ratio of medians.
            paired = [y[0] / x[0] for x, y in zip(p, s)]
            print(f"| {proto} | {c} | {pt:,.0f} | {med(a, 0):,.0f} ({med(a, 0) / pt:.2f}) | {med(s, 0):,.0f} ({med(s, 0) / pt:.2f}) "
                  f"| {statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f}) "
                  f"| {med(p, 1):.0f} / {med(a, 1):.0f} / {med(s, 1):.0f} | {med(p, 2):.0f} / {med(a, 2):.0f} / {med(s, 2):.0f} "
                  f"| {med(p, 3):.0f} / {med(a, 3):.0f} / {med(s, 3):.0f} |")
    if base:
        print(f"\nBaseline (plain with {args.baseline_flags}):\n")
        print("| protocol | concurrency | baseline infer/s | plain / baseline per round (median, min–max) | server CPU µs per request baseline / plain |")
        print("|---|---|---|---|---|")
        for proto in protocols:
            for c in levels:
                p, b = results[(proto, c, "plain")], results[(proto, c, "baseline")]
                paired = [x[0] / y[0] for x, y in zip(p, b)]
                print(f"| {proto} | {c} | {med(b, 0):,.0f} | {statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f}) "
                      f"| {med(b, 2):.0f} / {med(p, 2):.0f} |")


if __name__ == "__main__":
    main()
