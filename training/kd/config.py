"""Distillation configs: which terms, their weights and settings; unknown keys rejected with a suggestion.

A config is a dict of term -> settings (missing settings take the defaults below). It can be given as
a dict, a JSON or YAML file, inline JSON, or a variant name such as ``logits+pca+gl`` (each term with
its defaults). ``logits`` is always present: ``a*CE + (1-a)*T^2*KL``; ``labels`` is that term with a = 1
(the same student on labels alone, no teacher pass).
"""
import difflib
import json
import os

TERMS = {
    "logits": {"alpha": 0.3, "temperature": 4.0},
    "pca": {"weight": 1.0, "p_cross": 0.5, "target": "attention"},
    "gl": {"weight": 1.0, "block": 2},
    "adversarial": {"weight": 0.1, "reversal": 1.0, "hidden": 256},
    "multiview": {"mask_ratio": 0.25, "cell_px": 16},
    "fmap": {"weight": 1.0, "distance": "mse"},
}
ALIASES = {"adv": "adversarial", "mv": "multiview", "kd": "logits"}
VARIANT_NAMES = {"labels": {"logits": {"alpha": 1.0}}}


def _check_keys(keys, allowed, where):
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = "; did you mean {!r}?".format(close[0]) if close else ""
            raise ValueError("{}: unknown key {!r}{} (known: {})".format(where, key, hint, ", ".join(allowed)))


def resolve(config, where="kd config"):
    """The full config: every chosen term with every setting, ``logits`` always present."""
    if not isinstance(config, dict):
        raise ValueError("{}: expected a mapping of term -> settings, got {}".format(where, type(config).__name__))
    config = {ALIASES.get(k, k): v for k, v in config.items()}
    _check_keys(config, TERMS, where)
    out = {}
    for term in TERMS:
        if term not in config and term != "logits":
            continue
        settings = config.get(term) or {}
        if not isinstance(settings, dict):
            raise ValueError("{}: {!r} must map to settings, got {!r}".format(where, term, settings))
        _check_keys(settings, TERMS[term], "{} [{}]".format(where, term))
        out[term] = dict(TERMS[term], **settings)
    return out


def from_variant(name):
    """``labels``, ``logits``, ``logits+pca``... -> resolved config."""
    config = {}
    for part in name.split("+"):
        part = part.strip()
        if part in VARIANT_NAMES:
            config.update(VARIANT_NAMES[part])
        else:
            config[part] = {}
    return resolve(config, where="variant {!r}".format(name))


def load(text):
    """A config from a JSON/YAML file path, inline JSON, or a variant name."""
    if os.path.isfile(text):
        with open(text) as f:
            raw = f.read()
        if text.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise RuntimeError("{}: reading YAML needs PyYAML: pip install pyyaml".format(text))
            return resolve(yaml.safe_load(raw) or {}, where=text)
        try:
            return resolve(json.loads(raw), where=text)
        except json.JSONDecodeError as exc:
            raise ValueError("{}: not valid JSON: {}".format(text, exc))
    if text.lstrip().startswith("{"):
        return resolve(json.loads(text))
    return from_variant(text)


def needs_teacher(config):
    return config["logits"]["alpha"] < 1.0 or any(t in config for t in ("pca", "gl", "adversarial", "fmap"))
