"""Time and memory benchmarks: python -m bench.perf <benchmark> [--json FILE] [options].

Prints the benchmark's figures; ``--json`` also writes them, with the settings, torch version, machine
and date, as a report the documentation can cite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bench.cli import command_parser, pick
from bench.perf import BENCHMARKS
from bench.report import BenchReport


def main(argv: Sequence[str] | None = None) -> int:
    name, module, rest = pick(argv, "bench.perf", __doc__, BENCHMARKS)
    parser = command_parser("bench.perf", name, module)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    report = BenchReport(name, settings={key: value for key, value in vars(args).items() if key != "json"})
    # Benchmarks switch autograd off (and may set torch's threads) for the whole process, as a command
    # should; called in-process (tests), the caller gets both back as they were.
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        status = module.run(args, report)
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    report.status = status
    if args.json:
        report.write_json(args.json)
        print(f"report: {args.json}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
