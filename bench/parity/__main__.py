"""Our method against its official code: python -m bench.parity <method> --official DIR [--json FILE].

Prints one line per compared quantity (max |delta|, its target, ok or MISS) and a PASS/FAIL verdict;
exits 0 when every quantity meets its target, 1 when one misses, 2 without the official code.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cli import command_parser, pick
from bench.parity import METHODS
from bench.report import ParityReport


def main(argv: Sequence[str] | None = None) -> int:
    method, module, rest = pick(argv, "bench.parity", __doc__, METHODS)
    parser = command_parser("bench.parity", method, module)
    official = module.OFFICIAL
    parser.add_argument("--official", metavar=official.metavar, help=official.help)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    source, described = official.resolve(args.official, method)
    settings = {key: value for key, value in vars(args).items() if key not in ("official", "json")}
    report = ParityReport(method, official=described, settings=settings)
    module.run(args, source, report)
    return report.finish(args.json)


if __name__ == "__main__":
    raise SystemExit(main())
