"""The losses of WSCFER and the alternatives it is ablated against.

All contrastive losses take the same inputs (see ``../shared/docs/METHOD.md``):

* ``u``       [M, d] L2-normalised instance embeddings of every sample that can
              be contrasted against (under DDP: gathered from all ranks);
* ``labels``  [M]    class ids (only equality is used, so any relabelling of
              the classes gives the same loss);
* ``pair``    [M]    index of the other augmented view of the same image;
* ``anchors`` [A]    indices of the rows that act as anchors (default: all).

They are computed in fp32, with masks built from the label vector once per
call.  Entries outside a candidate set are filled with a large *finite*
negative before the log-sum-exp, never ``-inf``: ``0 * inf`` would turn the
gradients into NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MASKED = -1e9  # exp(MASKED - anything reasonable) == 0 in fp32, but stays finite


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """L_cls: cross-entropy, averaged over every sample (both views)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015) towards soft targets at temperature T:

        L_kd = T^2 * mean_i KL(q_i || softmax(z_i / T)),   q_i = the teachers' softened class distribution

    T^2 keeps the gradient scale independent of T.  ``teacher_probs`` rows sum to 1.
    """
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_student, teacher_probs.float(), reduction="batchmean")


class _Batch:
    """Masks shared by the contrastive losses, built once from labels and indices."""

    def __init__(self, u, labels, pair, anchors, tau):
        m = u.shape[0]
        device = u.device
        self.anchors = torch.arange(m, device=device) if anchors is None else anchors
        columns = torch.arange(m, device=device)
        u = u.float()
        self.sim = u[self.anchors] @ u.T / tau                                  # [A, M]
        self.is_self = columns[None, :] == self.anchors[:, None]
        self.is_pair = columns[None, :] == pair[self.anchors][:, None]
        self.other_class = labels[None, :] != labels[self.anchors][:, None]
        self.same_class = ~self.other_class & ~self.is_self


def _log_prob(sim: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """log softmax of ``sim`` restricted, row by row, to the ``candidates`` mask."""
    masked = sim.masked_fill(~candidates, MASKED)
    return masked - torch.logsumexp(masked, dim=1, keepdim=True)


def _mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the valid anchors; exactly 0 (with a graph) when none is."""
    count = valid.sum()
    if count == 0:
        return values.sum() * 0.0
    return (values * valid).sum() / count


def wsc_loss(u, labels, pair, anchors=None, tau: float = 0.1) -> torch.Tensor:
    """Weak supervised contrastive loss.

    D(a) = {a+} U {k : y_k != y_a}:  same-class samples other than a+ are neither
    positives nor negatives, so labels only remove false negatives.

        L_wsc = mean_a  -log( exp(s(u_a, u_a+)) / sum_{k in D(a)} exp(s(u_a, u_k)) ),
        s(x, y) = x . y / tau

    The mean runs over anchors whose D(a) holds more than a+; an anchor with no
    other-class sample in the batch would give exactly 0 and is left out, so
    the loss scale does not depend on the batch's class mix.  With every image
    in a class of its own this is SimCLR.
    """
    b = _Batch(u, labels, pair, anchors, tau)
    candidates = b.is_pair | b.other_class
    log_prob = _log_prob(b.sim, candidates)
    per_anchor = -(log_prob * b.is_pair).sum(1)
    return _mean_over(per_anchor, b.other_class.any(1))


def simclr_loss(u, labels, pair, anchors=None, tau: float = 0.1) -> torch.Tensor:
    """SimCLR / NT-Xent: D(a) = every sample but a; the positive is a+. Labels unused."""
    b = _Batch(u, labels, pair, anchors, tau)
    log_prob = _log_prob(b.sim, ~b.is_self)
    return -(log_prob * b.is_pair).sum(1).mean()


def supcon_loss(u, labels, pair, anchors=None, tau: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss, the L_out form of Khosla et al. (2020).

        L_a = -1/|P(a)| sum_{p in P(a)} log( exp(s(u_a,u_p)) / sum_{k != a} exp(s(u_a,u_k)) )

    with P(a) = every other sample of a's class (a+ included, so P(a) is never empty).
    """
    b = _Batch(u, labels, pair, anchors, tau)
    positives = b.same_class | b.is_pair
    log_prob = _log_prob(b.sim, ~b.is_self)
    return (-(log_prob * positives).sum(1) / positives.sum(1)).mean()


def pcl_loss(u, logits, labels, pair, anchors=None, tau: float = 0.1, tau_c: float | None = None) -> torch.Tensor:
    """Partial consistency loss between the instance and the class embedding spaces.

    On N(a) = {k : y_k != y_a} only (same-class pairs and a+ excluded):

        P_ins(k|a) = softmax_{k in N(a)}  u_a . u_k / tau
        P_cls(k|a) = softmax_{k in N(a)}  c_a . c_k / tau_c,   c = normalize(z - mean(z))
        L_pcl = mean_a  KL(sg(P_ins) || P_cls) + KL(sg(P_cls) || P_ins)

    Logits are centred because cross-entropy ignores a constant added to all
    logits while cosine similarity does not.  The mean runs over anchors with
    a non-empty N(a); without one the loss is exactly 0.
    """
    tau_c = tau if tau_c is None else tau_c
    z = logits.float()
    c = F.normalize(z - z.mean(dim=1, keepdim=True), dim=1, eps=1e-6)
    ins = _Batch(u, labels, pair, anchors, tau)
    cls_sim = c[ins.anchors] @ c.T / tau_c
    negatives = ins.other_class
    log_p_ins = _log_prob(ins.sim, negatives)
    log_p_cls = _log_prob(cls_sim, negatives)
    p_ins, p_cls = log_p_ins.exp() * negatives, log_p_cls.exp() * negatives
    kl_ins_cls = (p_ins.detach() * (log_p_ins.detach() - log_p_cls) * negatives).sum(1)
    kl_cls_ins = (p_cls.detach() * (log_p_cls.detach() - log_p_ins) * negatives).sum(1)
    return _mean_over(kl_ins_cls + kl_cls_ins, negatives.any(1))


def with_pcl_warmup(loss_cfg: dict, epochs_done: float) -> dict:
    """``loss_cfg`` at a point of training, ``lambda_pcl`` ramped up linearly over ``pcl_warmup_epochs``:

        lambda_pcl(e) = lambda_pcl * min(1, e / pcl_warmup_epochs)     (no ramp when it is 0)

    The consistency pull then waits until the classifier's logits carry
    some class structure (a hypothesis of docs/ABLATION.md).
    """
    warmup = loss_cfg.get("pcl_warmup_epochs", 0.0)
    if not warmup or epochs_done >= warmup:
        return loss_cfg
    return {**loss_cfg, "lambda_pcl": loss_cfg["lambda_pcl"] * epochs_done / warmup}


CONTRASTIVE_LOSSES = {"wsc": wsc_loss, "simclr": simclr_loss, "supcon": supcon_loss}
AUX_CHOICES = ("none", "simclr", "supcon", "wsc", "wscfer")


PARTS = ("cls", "kd", "aux", "pcl")


def objective(logits, u, labels, pair, anchors, loss_cfg: dict,
              teacher_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_cls + lambda_aux * L_aux, plus lambda_pcl * L_pcl for ``aux: wscfer``.

    With ``teacher_probs`` (soft targets of the anchors, see ``distill.py``)
    L_cls becomes (1 - w) * L_cls + w * L_kd, w = ``distill_weight``.

    Every tensor covers all samples that can be contrasted (under DDP, gathered
    from all ranks); ``anchors`` indexes the local ones, which alone enter
    L_cls and act as anchors.  ``loss_cfg`` holds ``aux`` (one of
    AUX_CHOICES), ``tau``, ``tau_c``, ``lambda_aux``, ``lambda_pcl`` and
    ``label_smoothing``.  Returns the loss and its detached parts for logging,
    under the keys of PARTS: ``cls``, ``kd`` (distillation), ``aux`` (the
    contrastive term) and ``pcl``, None for a term the loss does not have.
    """
    aux = loss_cfg["aux"]
    if aux not in AUX_CHOICES:
        raise ValueError(f"loss.aux must be one of {AUX_CHOICES}, got {aux!r}")
    loss = classification_loss(logits[anchors], labels[anchors], loss_cfg.get("label_smoothing", 0.0))
    parts = dict.fromkeys(PARTS)
    parts["cls"] = loss.detach()
    if teacher_probs is not None:
        kd = distillation_loss(logits[anchors], teacher_probs, loss_cfg["distill_temperature"])
        loss = (1.0 - loss_cfg["distill_weight"]) * loss + loss_cfg["distill_weight"] * kd
        parts["kd"] = kd.detach()
    if aux != "none":
        contrastive = CONTRASTIVE_LOSSES["wsc" if aux == "wscfer" else aux]
        aux_loss = contrastive(u, labels, pair, anchors, tau=loss_cfg["tau"])
        loss = loss + loss_cfg["lambda_aux"] * aux_loss
        parts["aux"] = aux_loss.detach()
    if aux == "wscfer":
        consistency = pcl_loss(u, logits, labels, pair, anchors, tau=loss_cfg["tau"], tau_c=loss_cfg.get("tau_c"))
        loss = loss + loss_cfg["lambda_pcl"] * consistency
        parts["pcl"] = consistency.detach()
    return loss, parts
