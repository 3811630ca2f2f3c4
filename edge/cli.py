"""retina-edge: screen fundus images on the device with a model bundle.

A thin dispatcher over the verb table in ``edge.commands``.
"""
import importlib
import sys

from edge.cliutil import Parser
from edge.commands import VERBS
from edge.commands.common import EXIT_CODES_HELP, EXIT_USAGE


def _verb_modules():
    return [(name, importlib.import_module(module)) for name, module in VERBS]


def _example_lines(examples):
    """A verb's examples without their own ``examples:`` heading, for the one list in the top-level help."""
    block = examples.split("\n\n")[0]
    return "\n".join(line for line in block.splitlines() if line.strip() != "examples:")


def build_parser():
    modules = _verb_modules()
    epilog = "examples:\n" + "\n".join(_example_lines(m.EXAMPLES) for _, m in modules) + "\n\n" + EXIT_CODES_HELP
    parser = Parser(prog="retina-edge", description="Retinal screening aid on the edge (not a diagnosis).",
                    epilog=epilog)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module in modules:
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION, epilog=module.EXAMPLES,
                           formatter_class=parser.formatter_class)
        p.set_defaults(_parser=p, verb=name, _main=module.main)
        module.add_arguments(p)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return EXIT_USAGE
    return args._main(args)


if __name__ == "__main__":
    sys.exit(main())
