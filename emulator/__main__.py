"""Run the Azure ML Studio (classic) emulator: ``python -m emulator --port 8900``.

Prints one JSON line with the base URL and the seeded training service's BES jobs URL, then serves
until interrupted. ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading

from emulator.app import DEFAULT_SERVICE, DEFAULT_WORKSPACE, create


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Local Azure ML Studio (classic) emulator: BES for a training web service.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 = any free port")
    parser.add_argument("--api-key", required=True, help="API key of the seeded training service")
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE)
    parser.add_argument("--service", default=DEFAULT_SERVICE)
    parser.add_argument("--job-seconds", type=float, default=1.0, help="how long a job stays Running")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    emulator, _ = create(api_key=args.api_key, workspace=args.workspace, service=args.service)
    emulator.config["job_seconds"] = args.job_seconds
    url = emulator.serve(args.host, args.port)
    print(
        json.dumps({"url": url, "bes_jobs_url": f"{url}/workspaces/{args.workspace}/services/{args.service}/jobs"}),
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emulator.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
