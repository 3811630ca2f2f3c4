"""Logit distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015).

    L = a * CE(z_s, y) + (1 - a) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The T^2 factor keeps the soft term's gradient scale independent of T (section 2 of the paper).
Defaults a = 0.3, T = 4. ``soft_kd`` takes the teacher's probabilities at temperature T instead of its
logits (what a soft-label cache stores); both give the same value for p_t = softmax(z_t / T).
"""
import torch
import torch.nn.functional as F

ALPHA, TEMPERATURE = 0.3, 4.0


def logit_kd(z_s, z_t, temperature=TEMPERATURE):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(z_s / t, dim=1), F.log_softmax(z_t / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def soft_kd(z_s, p_t, temperature=TEMPERATURE):
    """T^2 * KL(p_t || softmax(z_s/T)) for teacher probabilities p_t already at temperature T."""
    t = temperature
    p_t = p_t.float()
    kl = torch.xlogy(p_t, p_t) - p_t * F.log_softmax(z_s / t, dim=1)
    return kl.sum(dim=1).mean() * (t * t)


def combine(ce, kd, alpha=ALPHA):
    """a * CE + (1 - a) * KD."""
    return alpha * ce + (1.0 - alpha) * kd
