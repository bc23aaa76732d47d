"""The Bayes-PFL parity harness's check of ``temperature_image``'s gradient (``bench/parity/bayespfl.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.parity.bayespfl import cancellation_relative, temperature_gradient_terms


def _temperature_gradient(cosines: torch.Tensor, labels: torch.Tensor, temperature: float):
    t = torch.tensor(temperature, dtype=cosines.dtype, requires_grad=True)
    logits = t.exp() * cosines
    logits.retain_grad()
    F.cross_entropy(logits, labels).backward()
    return t.grad, logits.grad, logits.detach()


def test_terms_sum_to_the_temperature_gradient():
    cosines = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0])
    grad, logit_grad, logits = _temperature_gradient(cosines, labels, 2.66)
    terms = temperature_gradient_terms(logit_grad, logits)
    assert terms.shape == logits.shape
    torch.testing.assert_close(terms.sum(), grad, rtol=1e-12, atol=0.0)


def test_a_cancelling_gradient_is_measured_against_the_magnitude_of_its_terms():
    # Nearly equal normal and abnormal logits: the terms (~0.1) cancel to a total ~100 times smaller, as
    # in the full-width harness; a 1e-7 change of the cosines moves the total by more than 1e-4 of itself.
    cosines = torch.tensor([[0.0223, 0.0228], [0.0300, 0.0296]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    grad, logit_grad, logits = _temperature_gradient(cosines, labels, 2.66)
    nudged, _, _ = _temperature_gradient(cosines + torch.tensor([[1e-7, 0.0], [0.0, 0.0]]), labels, 2.66)
    terms = temperature_gradient_terms(logit_grad, logits)
    assert float(terms.abs().sum()) > 50 * abs(float(grad))
    assert abs(float(nudged - grad)) / abs(float(grad)) > 1e-4
    assert cancellation_relative(nudged, grad, terms) < 1e-5
    assert cancellation_relative(grad, grad, terms) == 0.0
