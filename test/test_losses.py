"""The WSCFER losses against slow references written with explicit loops, and their properties."""
import math

import pytest
import torch
import torch.nn.functional as F

from wscfer_train.losses import distillation_loss, objective, pcl_loss, simclr_loss, supcon_loss, wsc_loss, with_pcl_warmup

TAU = 0.1


def two_view_batch(labels, dim=8, seed=0):
    """Embeddings for 2N samples laid out [view 1 of N images; view 2], with pair indices and labels."""
    torch.manual_seed(seed)
    labels = torch.as_tensor(labels)
    n = len(labels)
    u = F.normalize(torch.randn(2 * n, dim, dtype=torch.float64), dim=1)
    pair = (torch.arange(2 * n) + n) % (2 * n)
    return u, labels.repeat(2), pair


def s(u, a, k, tau=TAU):
    return float(u[a] @ u[k]) / tau


def ref_contrastive(u, y, pair, candidates_of, positives_of, valid_of=lambda a: True):
    total, count = 0.0, 0
    for a in range(len(y)):
        if not valid_of(a):
            continue
        cands = candidates_of(a)
        log_denominator = math.log(sum(math.exp(s(u, a, k)) for k in cands))
        positives = positives_of(a)
        total += -sum(s(u, a, p) - log_denominator for p in positives) / len(positives)
        count += 1
    return total / count if count else 0.0


def ref_wsc(u, y, pair):
    m = len(y)
    return ref_contrastive(
        u, y, pair,
        candidates_of=lambda a: [int(pair[a])] + [k for k in range(m) if y[k] != y[a]],
        positives_of=lambda a: [int(pair[a])],
        valid_of=lambda a: any(y[k] != y[a] for k in range(m)))


def ref_simclr(u, y, pair):
    m = len(y)
    return ref_contrastive(u, y, pair, lambda a: [k for k in range(m) if k != a], lambda a: [int(pair[a])])


def ref_supcon(u, y, pair):
    m = len(y)
    return ref_contrastive(u, y, pair, lambda a: [k for k in range(m) if k != a],
                           lambda a: [k for k in range(m) if k != a and y[k] == y[a]])


def ref_pcl(u, logits, y, tau=TAU, tau_c=TAU):
    m = len(y)
    c = logits - logits.mean(1, keepdim=True)
    c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-6)
    total, count = 0.0, 0
    for a in range(m):
        negatives = [k for k in range(m) if y[k] != y[a]]
        if not negatives:
            continue
        def softmax(x):
            x = torch.tensor(x, dtype=torch.float64)
            return torch.softmax(x, 0)
        p_ins = softmax([float(u[a] @ u[k]) / tau for k in negatives])
        p_cls = softmax([float(c[a] @ c[k]) / tau_c for k in negatives])
        kl = lambda p, q: float((p * (p.log() - q.log())).sum())
        total += kl(p_ins, p_cls) + kl(p_cls, p_ins)
        count += 1
    return total / count if count else 0.0


BATCHES = {
    "repeated and missing classes": [0, 0, 3, 3, 3, 5],
    "two classes": [1, 2, 1, 2, 2],
    "single class": [4, 4, 4, 4],
    "all distinct": [0, 1, 2, 3, 4, 5, 6],
}


@pytest.mark.parametrize("labels", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize("fast, slow", [(wsc_loss, ref_wsc), (simclr_loss, ref_simclr), (supcon_loss, ref_supcon)],
                         ids=["wsc", "simclr", "supcon"])
def test_contrastive_losses_match_loop_reference(labels, fast, slow):
    u, y, pair = two_view_batch(labels)
    assert float(fast(u, y, pair, tau=TAU)) == pytest.approx(slow(u, y, pair), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("labels", BATCHES.values(), ids=BATCHES.keys())
def test_pcl_matches_loop_reference(labels):
    u, y, pair = two_view_batch(labels)
    logits = torch.randn(len(y), 7, dtype=torch.float64)
    assert float(pcl_loss(u, logits, y, pair, tau=TAU)) == pytest.approx(ref_pcl(u, logits, y), rel=1e-5, abs=1e-9)


def test_wsc_with_every_image_its_own_class_is_simclr():
    ids = torch.arange(12)            # more ids than the 7 expression classes
    u, y, pair = two_view_batch(ids)
    assert float(wsc_loss(u, y, pair)) == pytest.approx(float(simclr_loss(u, y, pair)), rel=1e-9)


def test_wsc_ignores_same_class_samples_supcon_pulls_them():
    """Moving a same-class sample changes SupCon but not WSC (labels never define positives)."""
    u, y, pair = two_view_batch([0, 0, 1, 2])
    moved = u.clone()
    moved[1] = F.normalize(torch.randn(8, dtype=torch.float64), dim=0)
    anchors = torch.tensor([0])
    assert float(wsc_loss(u, y, pair, anchors)) == pytest.approx(float(wsc_loss(moved, y, pair, anchors)))
    assert float(supcon_loss(u, y, pair, anchors)) != pytest.approx(float(supcon_loss(moved, y, pair, anchors)))


@pytest.mark.parametrize("loss", [wsc_loss, simclr_loss, supcon_loss])
def test_invariant_to_relabelling_classes(loss):
    u, y, pair = two_view_batch([0, 0, 3, 3, 3, 5])
    relabelled = torch.tensor([6, 2, 0, 1, 4, 3, 5])[y]
    assert float(loss(u, y, pair)) == pytest.approx(float(loss(u, relabelled, pair)), rel=1e-12)


def test_single_class_batch_gives_zero_wsc_and_pcl_with_finite_gradients():
    u, y, pair = two_view_batch([2, 2, 2])
    u.requires_grad_(True)
    logits = torch.randn(len(y), 7, dtype=torch.float64, requires_grad=True)
    loss = wsc_loss(u, y, pair) + pcl_loss(u, logits, y, pair)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(u.grad).all() and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("aux", ["none", "simclr", "supcon", "wsc", "wscfer"])
def test_objective_gradients_finite_for_a_small_last_batch(aux):
    u, y, pair = two_view_batch([3, 1, 3])         # a last batch of 3 images, classes missing
    u = u.float().requires_grad_(True)
    logits = torch.randn(len(y), 7, requires_grad=True)
    cfg = {"aux": aux, "tau": TAU, "lambda_aux": 0.5, "lambda_pcl": 0.5}
    loss, parts = objective(logits, u, y, pair, torch.arange(len(y)), cfg)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert (u.grad is None) if aux == "none" else torch.isfinite(u.grad).all()
    assert list(parts) == ["cls", "kd", "aux", "pcl"] and parts["kd"] is None
    assert (parts["aux"] is None) == (aux == "none") and (parts["pcl"] is None) == (aux != "wscfer")


def test_large_similarities_stay_finite():
    """Identical embeddings at a tiny temperature: huge logits, no overflow or NaN."""
    u, y, pair = two_view_batch([0, 1, 2, 0])
    u = torch.ones_like(u) / math.sqrt(u.shape[1])
    u.requires_grad_(True)
    loss = wsc_loss(u.float(), y, pair, tau=0.001) + supcon_loss(u.float(), y, pair, tau=0.001)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(u.grad).all()


def test_unknown_aux_is_a_clear_error():
    u, y, pair = two_view_batch([0, 1])
    with pytest.raises(ValueError, match="loss.aux"):
        objective(torch.randn(4, 7), u.float(), y, pair, torch.arange(4), {"aux": "triplet", "tau": TAU})


def test_distillation_loss_is_t_squared_times_the_kl_divergence():
    torch.manual_seed(0)
    logits, temperature = torch.randn(5, 7, dtype=torch.float64), 4.0
    targets = torch.softmax(torch.randn(5, 7, dtype=torch.float64), dim=1)
    student = torch.softmax(logits / temperature, dim=1)
    kl = sum(float((targets[i] * (targets[i] / student[i]).log()).sum()) for i in range(5)) / 5
    assert distillation_loss(logits, targets, temperature).item() == pytest.approx(temperature ** 2 * kl, rel=1e-5)
    assert distillation_loss(logits, student, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_objective_with_teachers_mixes_cross_entropy_and_distillation():
    u, y, pair = two_view_batch([0, 1, 2])
    logits = torch.randn(len(y), 7)
    targets = torch.softmax(torch.randn(len(y), 7), dim=1)
    cfg = {"aux": "none", "tau": TAU, "distill_weight": 0.7, "distill_temperature": 2.0}
    loss, parts = objective(logits, u.float(), y, pair, torch.arange(len(y)), cfg, teacher_probs=targets)
    assert loss.item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item()
                                        + 0.7 * distillation_loss(logits, targets, 2.0).item(), rel=1e-5)
    assert parts["kd"].item() == pytest.approx(distillation_loss(logits, targets, 2.0).item())


def test_the_pcl_warmup_ramps_lambda_pcl_up_from_zero_and_then_leaves_it():
    cfg = {"aux": "wscfer", "tau": TAU, "lambda_aux": 0.5, "lambda_pcl": 0.5, "pcl_warmup_epochs": 4.0}
    assert [with_pcl_warmup(cfg, epochs)["lambda_pcl"] for epochs in (0.0, 1.0, 2.0, 4.0, 9.0)] == \
        [0.0, 0.125, 0.25, 0.5, 0.5]
    assert with_pcl_warmup({**cfg, "pcl_warmup_epochs": 0.0}, 0.0)["lambda_pcl"] == 0.5
    u, y, pair = two_view_batch([0, 1, 2, 0])
    logits = torch.randn(len(y), 7)
    at_start, _ = objective(logits, u.float(), y, pair, torch.arange(len(y)), with_pcl_warmup(cfg, 0.0))
    without_pcl, _ = objective(logits, u.float(), y, pair, torch.arange(len(y)), {**cfg, "aux": "wsc"})
    assert at_start.item() == pytest.approx(without_pcl.item())
