"""Run the Azure ML Studio (classic) emulator: ``python -m emulator --api-key KEY --port 8900``.

Prints one JSON line with the base URL and the URLs of the seeded services, then serves until
interrupted or terminated. ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading

from emulator import app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Local emulator of Azure ML Studio "
        "(classic): BES, classic endpoint management, ARM web services, RRS, and a "
        "managed-identity token endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 = any free port")
    parser.add_argument("--api-key", required=True, help="key of the seeded training and predictive services")
    parser.add_argument("--workspace", default=app.DEFAULT_WORKSPACE)
    parser.add_argument("--service", default=app.DEFAULT_SERVICE)
    parser.add_argument(
        "--storage-connection-string",
        help="storage account of the seeded ARM web service (without it, no ARM web service is seeded)",
    )
    parser.add_argument("--identity-header", help="secret expected in X-IDENTITY-HEADER (default: random)")
    parser.add_argument("--job-seconds", type=float, default=1.0, help="how long a BES job stays Running")
    parser.add_argument("--lro-seconds", type=float, default=0.5, help="how long an ARM update stays Provisioning")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    services = app.create(
        api_key=args.api_key,
        workspace=args.workspace,
        service=args.service,
        storage_connection_string=args.storage_connection_string,
        identity_header=args.identity_header,
    )
    services.emulator.config.update(job_seconds=args.job_seconds, lro_seconds=args.lro_seconds)
    url = services.serve(args.host, args.port)
    classic = f"{url}/workspaces/{args.workspace}/webservices/{app.PREDICTIVE_SERVICE}/endpoints"
    arm = next(iter(services.arm.services.values()), None)
    print(
        json.dumps(
            {
                "url": url,
                "bes_jobs_url": f"{url}/workspaces/{args.workspace}/services/{args.service}/jobs",
                "classic_endpoint_url": f"{classic}/{app.RETRAIN_ENDPOINT}",
                "classic_default_endpoint_url": f"{classic}/default",
                "classic_resource_name": app.TRAINED_MODEL,
                "arm_resource_id": arm.resource_id if arm else None,
                "identity_endpoint": f"{url}/msi/token",
                "identity_header": services.identity.header_secret,
                "v2_workspace": next(iter(services.v2.workspaces.values())).resource_id,
                "v2_datastore": "autopilot_training",
                "v2_batch_endpoint": "retrain-census",
                "v2_online_endpoint": "census-online",
            }
        ),
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    services.emulator.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
