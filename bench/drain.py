"""`python -m bench.drain --config PATH`: process every stored message with the real Processor, then exit.

A stand-in for the processing half of `mail2ticket import` while that command does not exist: the backlog
benchmark runs `ingest --queue-only` and then this, each as its own process so each has its own peak RSS.
Prints one JSON line: {"processed": n, "seconds": s}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mail2ticket import log as logsetup
from mail2ticket.cli.common import open_services
from mail2ticket.config import load_config
from mail2ticket.pipeline.process import Processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    logsetup.configure(config.daemon.log_format, config.daemon.log_level)
    runtime, services = open_services(config)
    try:
        start = time.perf_counter()
        processed = Processor(services, lambda: runtime).drain()
        seconds = time.perf_counter() - start
    finally:
        services.close()
    print(json.dumps({"processed": processed, "seconds": seconds}))


if __name__ == "__main__":
    main()
