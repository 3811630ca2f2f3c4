"""Class activation maps on the device, without gradients: ``retina-edge run --explain``.

A bundle made explainable (``retina-train explain --bundle DIR``) carries
``model.cam.onnx``, model.onnx with its last feature map F (N x C x h x w, the
tensor before global average pooling) as a second output, and
``classifier.json``, the final layer's weight W [classes, C]. The network's
logit k is W[k] . mean_hw(F) + b[k], so the map CAM_k = sum_c W[k, c] F[c]
(h x w) is what the network averages into that logit (Zhou et al., 2016).
The device computes it for the label the bundle's decision rule gives, with
one NumPy product, and maps it back through the preprocessing (fundus-disc
crop, square padding, resize) so the heat map lands on the original
photograph; annotated-images outputs write it as ``<name>.cam.jpg``.

Pieces: ``CamBackend`` wraps the ONNX Runtime backend made on model.cam.onnx
and keeps each batch's feature maps; ``ExplainingPipeline`` computes the map of
each ok frame right after its batch (on the inference thread, where the
features are) and leaves it in ``frame.meta["cam"]``; ``cam_overlay`` draws it
on the output thread. TensorRT engines are built from model.onnx, which has
no feature-map output: there ``--explain`` says so in one line and the run
screens without maps.
"""
import json

import cv2
import numpy as np

from edge.pipeline import Pipeline
from edge.preprocess import roi_box

CAM_KEY = "cam"  # frame.meta[CAM_KEY] = {"map": h x w float32, "label": name}
HEAT_ALPHA = 0.45  # weight of the heat map in the overlay


class ExplainUnavailable(RuntimeError):
    """``--explain`` cannot make maps with this bundle or backend; the message is the one line to print."""


def load_classifier(bundle):
    """(weight [classes, C] float32, bias [classes] float32) from the bundle's classifier.json."""
    path = bundle.explain_path("classifier")
    with open(path, "r") as f:
        data = json.load(f)
    weight, bias = np.asarray(data["weight"], np.float32), np.asarray(data["bias"], np.float32)
    if data.get("labels") != bundle.labels or weight.ndim != 2 or bias.shape != (len(bundle.labels),) \
            or weight.shape[0] != len(bundle.labels):
        raise ValueError("{}: labels {} / weight {} / bias {} do not fit the bundle's labels {}".format(
            path, data.get("labels"), weight.shape, bias.shape, bundle.labels))
    return weight, bias


def class_activation_map(features, weight, index):
    """CAM of class ``index``: sum_c weight[index, c] * features[c]; features C x h x w -> h x w float32."""
    f = np.asarray(features, np.float32)
    return np.dot(np.asarray(weight[index], np.float32), f.reshape(f.shape[0], -1)).reshape(f.shape[1:])


def normalized(cam):
    """The map scaled to [0, 1] (min to max); a flat map is all zeros."""
    low, high = float(cam.min()), float(cam.max())
    if high - low <= 1e-12:
        return np.zeros(cam.shape, np.float32)
    return ((cam - low) / (high - low)).astype(np.float32)


def crop_box(rgb, roi):
    """The crop the preprocessing makes of ``rgb`` (x0, y0, x1, y1) by the bundle's roi rule (the fundus disc,
    the retina band, the centre square), else the whole frame."""
    h, w = rgb.shape[:2]
    box = roi_box(rgb, roi or {"kind": "none"})
    return box if box is not None else (0, 0, w, h)


def _scaled_box(box, image_shape, out_shape):
    sy, sx = float(out_shape[0]) / image_shape[0], float(out_shape[1]) / image_shape[1]
    return (int(round(box[0] * sx)), int(round(box[1] * sy)), int(round(box[2] * sx)), int(round(box[3] * sy)))


def cam_on_image(cam, image_shape, box, out_shape=None):
    """The map (h x w over the network input) on the original photograph's pixels.

    The inverse of ``edge.preprocess``: the network input is the square (side = the
    crop's longer side) holding the crop centred in black padding, resized; the map's
    grid spans that square evenly, whatever the network size. ``out_shape`` (H, W) is
    the size to draw at (default ``image_shape``): the photograph scaled to it. Pixels
    outside the crop (never seen by the network) get 0. Bilinear, pixel centres kept.
    """
    img_h, img_w = image_shape[:2]
    out_h, out_w = out_shape if out_shape is not None else (img_h, img_w)
    x0, y0, x1, y1 = box
    crop_w, crop_h = x1 - x0, y1 - y0
    side = float(max(crop_w, crop_h))
    left, top = (side - crop_w) // 2, (side - crop_h) // 2
    grid_h, grid_w = cam.shape
    sx, sy = float(out_w) / img_w, float(out_h) / img_h
    # output pixel centre i + 0.5 -> photograph X = (i + 0.5) / s -> square X - x0 + left -> grid (.) * w / side - 0.5
    ax, ay = grid_w / (side * sx), grid_h / (side * sy)
    matrix = np.array([[ax, 0.0, 0.5 * ax + (left - x0) * grid_w / side - 0.5],
                       [0.0, ay, 0.5 * ay + (top - y0) * grid_h / side - 0.5]], np.float64)
    heat = cv2.warpAffine(np.asarray(cam, np.float32), matrix, (int(out_w), int(out_h)),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    bx0, by0, bx1, by1 = _scaled_box(box, image_shape, (out_h, out_w))
    out = np.zeros_like(heat)
    out[by0:by1, bx0:bx1] = heat[by0:by1, bx0:bx1]
    return out


def cam_overlay(bgr, rgb, cam, roi, label=None):
    """``bgr`` (the photograph ``rgb`` as drawn, any scale) with the normalised map blended in as a colour
    map over the crop the network saw; outside it the photograph stays as it is."""
    box = crop_box(rgb, roi or {})
    heat = cam_on_image(normalized(cam), rgb.shape, box, bgr.shape[:2])
    x0, y0, x1, y1 = _scaled_box(box, rgb.shape, bgr.shape[:2])
    colours = cv2.applyColorMap((heat[y0:y1, x0:x1] * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
    out = bgr.copy()
    out[y0:y1, x0:x1] = cv2.addWeighted(bgr[y0:y1, x0:x1], 1.0 - HEAT_ALPHA, colours, HEAT_ALPHA, 0.0)
    if label:
        unit = max(out.shape[:2]) / 640.0
        text, org = "CAM: {}".format(label), (int(10 * unit), int(26 * unit))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * unit, (0, 0, 0), max(2, int(3 * unit)),
                    cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * unit, (255, 255, 255), max(1, int(2 * unit)),
                    cv2.LINE_AA)
    return out


# -- the run: a backend that keeps the feature maps, a pipeline that turns them into maps ----------------------

def no_feature_map_line(bundle):
    return ("--explain: the bundle {} has no feature-map output, so no heat maps are made (screening goes on); "
            "add one with `retina-train explain --bundle {}`".format(bundle.root, bundle.root))


class CamBackend(object):
    """The ONNX Runtime backend on model.cam.onnx: ``infer`` returns the logits and keeps the feature maps."""

    def __init__(self, inner, feature_output):
        self.inner = inner
        self.output_names = [inner.output_names[0], feature_output]
        self.name, self.precision, self.max_batch = inner.name, inner.precision, inner.max_batch
        self.features = None

    def make_preprocessor(self):
        return self.inner.make_preprocessor()

    def infer(self, batch):
        inner = self.inner
        feed = {inner.input_name: np.ascontiguousarray(batch, inner.input_dtype)}
        logits, features = inner.session.run(self.output_names, feed)
        self.features = features
        return np.asarray(logits, dtype=np.float32)

    def take_features(self):
        """The last batch's feature maps (N x C x h x w), once; None if taken or never made."""
        features, self.features = self.features, None
        return features

    def last_times_ms(self):
        return self.inner.last_times_ms()

    def describe(self):
        return self.inner.describe() + " with the feature-map output (--explain)"

    def close(self):
        self.inner.close()


class _CamModel(object):
    """The bundle as the ONNX Runtime backend sees it for --explain: model.cam.onnx, logits + features."""

    def __init__(self, bundle):
        self._bundle = bundle

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def model_path(self, precision="fp32"):
        return self._bundle.explain_path()

    @property
    def output_names(self):
        return self._bundle.output_names[:1] + [self._bundle.explain["feature_output"]]


def explaining_backend(name, bundle, **options):
    """A CamBackend for ``bundle``; raises ExplainUnavailable (one line) where no maps can be made."""
    if bundle.explain is None:
        raise ExplainUnavailable(no_feature_map_line(bundle))
    if name != "onnxruntime":
        raise ExplainUnavailable("--explain: the {} backend builds its engine from model.onnx, which has no "
                                 "feature-map output, so no heat maps are made (screening goes on); add "
                                 "--backend onnxruntime for heat maps".format(name))
    precision = options.get("precision") or "fp32"
    if precision not in ("fp32", "best"):
        raise ExplainUnavailable("--explain: the feature-map model is fp32, so no heat maps are made with "
                                 "--precision {} (screening goes on); drop --precision for heat maps".format(precision))
    from edge.backends.ort import OrtBackend
    options = dict(options, precision="fp32")
    return CamBackend(OrtBackend(_CamModel(bundle), **options), bundle.explain["feature_output"])


class ExplainingPipeline(Pipeline):
    """The Pipeline, plus each ok frame's class activation map (for its rule label) in ``frame.meta["cam"]``."""

    def __init__(self, bundle, backend, outputs=(), **options):
        super(ExplainingPipeline, self).__init__(bundle, backend, outputs, **options)
        self.weight, _ = load_classifier(bundle)
        self.labels = bundle.labels

    def infer_batch(self, frames, prepared, times):
        self.backend.take_features()  # a batch retried frame by frame comes back here, one frame at a time
        results = super(ExplainingPipeline, self).infer_batch(frames, prepared, times)
        features = self.backend.take_features()
        if features is None or len(features) != len(frames):
            return results
        start = self.clock()
        for frame, result, f in zip(frames, results, features):
            if result.status == "ok":
                index = self.labels.index(result.label)
                frame.meta[CAM_KEY] = {"map": class_activation_map(f, self.weight, index), "label": result.label}
        spent_ms = (self.clock() - start) * 1000.0 / len(frames)
        for t in times:
            t.add("post-process", spent_ms)
        return results
