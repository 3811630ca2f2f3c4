"""`retina-train VERB --config FILE.yaml`: a verb's options from a YAML (or JSON) file, the command line on top,
and the resolved configuration saved beside what the verb wrote.

A config file holds the verb's options by their long names (``image-size`` or ``image_size``) and, optionally,
``verb: teacher``::

    verb: teacher
    data: runs/split.csv
    model: convnextv2_atto
    image-size: 224
    augment: strong
    average: swa

The file is turned into command-line tokens placed before the user's own, so argparse checks every value (types,
choices, required options) exactly as if typed, and an option given on the command line wins because it comes
later. A key the verb does not have is refused before anything runs, with the closest option named. After a verb
succeeds, every option it ran with is written as YAML (``config.resolved.yaml`` in its output folder, or
``<file>.config.yaml`` beside an output file); ``--config`` takes that file back and reproduces the run's options.

Light: PyYAML and the standard library only (the CLI parses before torch is imported).
"""
import argparse
import difflib
import json
import os

RESOLVED_NAME = "config.resolved.yaml"
NOT_OPTIONS = ("help", "config", "print_config")  # the options about the config itself


class ConfigError(ValueError):
    pass


def add_arguments(p):
    p.add_argument("--config", default=None, metavar="FILE",
                   help="read this verb's options from a YAML or JSON file (keys: the long option names; the "
                        "command line wins); see README 'Configs' (default: none)")
    p.add_argument("--print-config", action="store_true",
                   help="print every option as resolved from --config and the command line, as YAML, and exit")


def load(path):
    """The mapping in a YAML or JSON config file; ConfigError naming the file and line."""
    import yaml
    try:
        with open(path) as f:
            text = f.read()
    except (IOError, OSError) as exc:
        raise ConfigError("{}: cannot read the config ({})".format(path, exc.strerror or exc))
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except ValueError as exc:
        raise ConfigError("{}: not valid JSON: {}".format(path, exc))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = ":{}".format(mark.line + 1) if mark is not None else ""
        raise ConfigError("{}{}: not valid YAML: {}".format(path, where, getattr(exc, "problem", None) or exc))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("{}: a config is a mapping of option: value, not a {}".format(path, type(data).__name__))
    return data


def options_of(parser):
    """option name (dashes) -> argparse action, for the verb parser's long options."""
    out = {}
    for action in parser._actions:
        for string in action.option_strings:
            if string.startswith("--") and action.dest not in NOT_OPTIONS:
                out[string[2:]] = action
    return out


def tokens(path, data, parser, verb):
    """The config ``data`` of file ``path`` as command-line tokens for ``parser`` (the verb's)."""
    options = options_of(parser)
    out = []
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name == "verb":
            if value != verb:
                raise ConfigError("{}: a config for `retina-train {}`, not for `{}`".format(path, value, verb))
            continue
        if name not in options:
            close = difflib.get_close_matches(name, list(options), n=1)
            raise ConfigError("{}: unknown key {!r}{} (the options of `retina-train {}`)".format(
                path, key, " (did you mean {!r}?)".format(close[0]) if close else "", verb))
        found = _tokens(path, key, "--" + name, options[name], value)
        _check(path, key, options[name], found[1:])
        out += found
    return out


def _check(path, key, action, values):
    """argparse's own checks of one option's values, but naming the file (argparse cannot)."""
    for value in values:
        try:
            converted = action.type(value) if action.type is not None else value
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise ConfigError("{}: {}: {!r} is not {}".format(
                path, key, value, {int: "a whole number", float: "a number"}.get(action.type, "valid")))
        if action.choices is not None and converted not in action.choices:
            raise ConfigError("{}: {}: {!r} is not one of {}".format(
                path, key, value, ", ".join(str(c) for c in action.choices)))


def _tokens(path, key, option, action, value):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError("{}: {} takes true or false, not {!r}".format(path, key, value))
        return [option] if value == isinstance(action, argparse._StoreTrueAction) else []
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        if action.nargs in (None, "?"):
            raise ConfigError("{}: {} takes one value, not a list".format(path, key))
        return [option] + [str(v) for v in value]
    if isinstance(value, dict):
        return [option, json.dumps(value)]  # e.g. an inline --kd-config
    if isinstance(value, bool):  # YAML reads a bare off/on/yes/no as a boolean
        raise ConfigError("{}: {} takes a value, not {}: quote it ({}: 'off') if you mean the word".format(
            path, key, str(value).lower(), key))
    return [option, str(value)]


def expand_argv(argv, parser):
    """``argv`` with each ``--config FILE`` of the chosen verb expanded in place of nothing, before the rest."""
    if not argv or argv[0].startswith("-"):
        return argv
    verb, rest = argv[0], list(argv[1:])
    path = None
    for i, arg in enumerate(rest):
        if arg == "--config" and i + 1 < len(rest):
            path = rest[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None:
        return argv
    verb_parser = _verb_parser(parser, verb)
    if verb_parser is None:
        return argv
    return [verb] + tokens(path, load(path), verb_parser, verb) + rest


def _verb_parser(parser, verb):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(verb)
    return None


def resolved(args):
    """Every option of the verb as run: {verb, option-name: value}, JSON/YAML-able."""
    out = {"verb": args.verb}
    for action in args._parser._actions:
        names = [s[2:] for s in action.option_strings if s.startswith("--")]
        if not names or action.dest in NOT_OPTIONS:
            continue
        value = getattr(args, action.dest, None)
        out[names[0]] = list(value) if isinstance(value, tuple) else value
    return out


def dump(args, command=""):
    import yaml
    head = "# retina-train {}: every option it ran with; reuse with --config\n".format(args.verb)
    if command:
        head += "# command: {}\n".format(command)
    return head + yaml.safe_dump(resolved(args), sort_keys=False, default_flow_style=False)


def output_path(args):
    """Where the resolved config of a finished verb goes (None: it wrote nothing to put it beside)."""
    out = getattr(args, "out", None)
    if args.verb == "soft-labels":
        out = out or os.path.join(args.teacher, "soft_labels.npz")
    elif args.verb in ("calibrate", "quantize") and not out:
        return os.path.join(args.bundle, "{}.{}".format(args.verb, RESOLVED_NAME))
    if not out:
        return None
    if os.path.isdir(out):
        return os.path.join(out, RESOLVED_NAME)
    return out + ".config.yaml"  # beside an output file (a split CSV, a cache)


def save(args, text):
    """Write ``text`` (``dump`` of the args as parsed, before the verb ran) beside the verb's output."""
    path = output_path(args)
    if path is None or not os.path.exists(os.path.dirname(os.path.abspath(path))):
        return None
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path
