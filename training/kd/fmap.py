"""Feature-map KD for CNN teachers such as ConvNeXtV2 (a hint loss on the last stage, Romero et al.,
"FitNets: Hints for Thin Deep Nets", ICLR 2015, with a 1x1-conv regressor as in Heo et al. 2019).

The student's last feature map goes through a 1x1 convolution to the teacher's channel count and is
resized (bilinear) to the teacher's last-stage map, then

    mse:    L = MSE(r(h_s), h_t)
    l2norm: L = mean over positions of || r(h_s)/|r(h_s)| - h_t/|h_t| ||^2   (channel vectors normalised)
"""
import torch.nn.functional as F
from torch import nn

DISTANCES = ("mse", "l2norm")


class FeatureMapKD(nn.Module):
    def __init__(self, student_channels, teacher_channels, distance="mse"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError("fmap distance must be one of {}, got {!r}".format(", ".join(DISTANCES), distance))
        self.distance = distance
        self.regressor = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, student_map, teacher_map):
        x = self.regressor(student_map)
        if x.shape[-2:] != teacher_map.shape[-2:]:
            x = F.interpolate(x, size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
        if self.distance == "mse":
            return F.mse_loss(x, teacher_map)
        diff = F.normalize(x, dim=1) - F.normalize(teacher_map, dim=1)
        return diff.pow(2).sum(dim=1).mean()
