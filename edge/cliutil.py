"""argparse with "did you mean" for unknown options, and worked examples in --help (Python 3.6)."""
import argparse
import difflib


class Parser(argparse.ArgumentParser):
    """Rejects unknown options naming the closest known one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # "--result" is a typo to point out, not a guess to make
        super(Parser, self).__init__(*args, **kwargs)

    def known_options(self):
        options = []
        for action in self._actions:
            options.extend(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                options.extend(action.choices)
        return options

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            hints = []
            for arg in message.split(":", 1)[1].split():
                token = arg.split("=", 1)[0]
                if token.startswith("-"):
                    close = difflib.get_close_matches(token, self.known_options(), n=1)
                    if close:
                        hints.append("{} (did you mean {}?)".format(token, close[0]))
            if hints:
                message = "unrecognized arguments: " + ", ".join(hints)
        super(Parser, self).error(message)

    def parse_args(self, args=None, namespace=None):
        # unknown options are checked against the subcommand that was chosen
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parser = getattr(parsed, "_parser", self)
            parser.error("unrecognized arguments: " + " ".join(extra))
        return parsed
