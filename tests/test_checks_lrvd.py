"""The rank-selection checks pass the package's own implementations and name each typical mistake."""

import pytest
import torch

from minibayeslora import checks
from minibayeslora.lrvd import kl_sparse_vd


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


def _k(la):
    return 0.63576 * torch.sigmoid(1.87320 + 1.48695 * la)


KL = {
    "negative": (lambda la: _k(la) - 0.5 * torch.log1p(1 / la.exp()) - 0.63576, "flip the sign"),
    "no_constant": (lambda la: -(_k(la) - 0.5 * torch.log1p(1 / la.exp())), "constant −k₁"),
    "alpha_not_inverse": (lambda la: -(_k(la) - 0.5 * torch.log1p(la.exp()) - 0.63576), "with 1/α"),
    "summed": (lambda la: kl_sparse_vd(la).sum(), "do not sum"),
    "not_implemented": (lambda la: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
}


@pytest.mark.parametrize("name", KL)
def test_kl_check_names_the_mistake(name):
    _fails_with(checks.check_kl_sparse_vd, *KL[name])


def test_kl_check_passes_the_package():
    assert checks.check_kl_sparse_vd(kl_sparse_vd)


REPARAM = {
    "alpha_as_std": (lambda u, la, e: u + u.abs() * la.exp() * e, "α is a variance"),
    "log_alpha_as_alpha": (lambda u, la, e: u + u.abs() * la * e, "exponentiate"),
    "additive": (lambda u, la, e: u + (0.5 * la).exp() * e, "scales with the signal"),
    "noise_only": (lambda u, la, e: u.abs() * (0.5 * la).exp() * e, "mean 1"),
}


@pytest.mark.parametrize("name", REPARAM)
def test_reparameterisation_check_names_the_mistake(name):
    _fails_with(checks.check_local_reparameterisation, *REPARAM[name])


def test_reparameterisation_check_accepts_both_correct_forms():
    assert checks.check_local_reparameterisation(lambda u, la, e: u + u.abs() * (0.5 * la).exp() * e)
    assert checks.check_local_reparameterisation(lambda u, la, e: u * (1 + (0.5 * la).exp() * e))


def _reference_prune(A, B, la, threshold):
    keep = la <= threshold
    return A[keep], B[:, keep]


def _prune_in_place(A, B, la, threshold):
    B.mul_((la <= threshold).float())  # zeroes the pruned columns of the caller's B
    return _reference_prune(A, B, la, threshold)


PRUNE = {
    "inverted": (lambda A, B, la, th: (A[la > th], B[:, la > th]), "you kept the noisy ranks"),
    "columns_of_A": (lambda A, B, la, th: (A[:, :int((la <= th).sum())], B[:, la <= th]), "select its rows"),
    "in_place": (_prune_in_place, "in place"),
    "single": (lambda A, B, la, th: A[la <= th], "pair"),
}


@pytest.mark.parametrize("name", PRUNE)
def test_prune_check_names_the_mistake(name):
    _fails_with(checks.check_prune, *PRUNE[name])


def test_prune_check_passes_the_reference():
    assert checks.check_prune(_reference_prune)
