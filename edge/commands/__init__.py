"""The verbs of ``retina-edge``, one module each, registered here (a table, not an if/elif).

A verb module offers ``HELP`` (one line), ``DESCRIPTION``, ``EXAMPLES``,
``add_arguments(parser)`` and ``main(args) -> exit code``. It imports only the
standard library at module level, so ``retina-edge --help`` stays instant and
works where ONNX Runtime or TensorRT are missing.
"""

# verb -> module, in the order --help lists them
VERBS = (
    ("run", "edge.commands.run"),
    ("build", "edge.commands.build"),
    ("selftest", "edge.commands.selftest"),
    ("profile", "edge.commands.profile"),
)
