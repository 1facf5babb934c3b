"""Laplace-LoRA: a Gaussian posterior around a trained adapter, fitted after training.

Yang et al. (2024), *Bayesian low-rank adaptation for large language models* (ICLR): train LoRA as usual,
which gives the MAP estimate θ* of the trainable tensors (every adapter's A and B, and the head; P numbers),
then approximate the posterior by a Gaussian at θ*,

    p(θ | D) ≈ N(θ*, Σ),   Σ⁻¹ = H + λ·I,   H = Σ_i J_iᵀ Λ_i J_i,

with J_i = ∂f(x_i; θ)/∂θ at θ* the Jacobian of the logits (C × P) and Λ_i = diag(p_i) − p_i p_iᵀ the Hessian of the
cross-entropy in the logits: H is the generalised Gauss–Newton (GGN) approximation of the Hessian of the training
NLL, and λ is the precision of a N(0, λ⁻¹·I) prior. Nothing is retrained: the fit is one pass over the training
data. λ is chosen after the fit by maximising the Laplace approximation of the marginal likelihood
(``tune="marglik"``) or the validation NLL (``tune="val"``).

The fit is laplace-torch's (Daxberger et al., 2021, *Laplace redux*) with its diagonal GGN: Yang et al. use
Kronecker factors, which curvlinops computes only for ``nn.Linear`` modules, while our LoRA factors are plain
parameters. A diagonal Σ (P numbers) ignores correlations between parameters, so it tends to spread the
predictive less faithfully than KFAC; it is the cheapest Laplace there is.

laplace-torch feeds a dict batch to ``model(batch)``; our classifiers take ``model(**inputs)``. ``_DictInput``
is the thin wrapper between them, and ``_Batches`` the loader it reads (dict batches with a ``labels`` key and a
``dataset`` whose length is N).

Predictive (``LaplaceLoRA.predict_samples(inputs, S) -> (S, N, C)``):
- ``pred_type="glm"`` (default): the linearised network f(x; θ*) + J(x)(θ_s − θ*), whose logits are Gaussian with
  mean f(x; θ*) and covariance J Σ Jᵀ (C × C); S draws of those logits, then softmax. The posterior was built for
  this linearised model (the GGN is its exact Hessian), and it is the predictive Laplace redux recommends;
- ``pred_type="nn"``: S parameter draws θ_s ~ N(θ*, Σ), each run through the network: softmax f(x; θ_s). With a
  diagonal Σ over LoRA factors this can wreck the network: on an adapter trained on 128 RT reviews it fell to
  chance accuracy (0.48 on 256 test reviews against the MAP's 0.70), where the glm predictive kept 0.55.
Neither depends on the batch size. With ``pred_type="nn"`` the same seed gives the same S parameter draws in
every batch, so each draw is one function over the whole data set; the glm draws of an example come from its own
generator, seeded by the seed and the example's index in its dataset (as ``noise`` does for the other samplers).

A fit is cached like a trained adapter (``fit_laplace(..., cache_key=...)``): the diagonal of H, the training loss
and the tuned λ as safetensors + JSON, keyed by the model (its recipe and trainable tensors), the data, the
settings, the device type and the library versions; a notebook's fits are shipped with its checkpoints
(``shipped``). Loading rebuilds the laplace-torch object from them, no pickle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__, config, metrics, noise, shipped
from .predictive import batch_rows
from .recipe import model_recipe
from .train import batched_logits, eval_mode

HESSIAN_STRUCTURES = ("diag",)
TUNING = ("marglik", "val", None)
PRED_TYPES = ("nn", "glm")


@dataclass
class LaplaceConfig:
    """``prior_precision`` λ to start from (or keep, with ``tune=None``); ``tune``: how λ is chosen;
    ``pred_type``: how the predictive is sampled (see the module); ``batch_size``: examples per Jacobian.

    laplace-torch takes the Jacobian of a batch's B × C logits with ``torch.func.jacrev``: B·C backward passes,
    each through the whole batch, so its cost grows with B². Small batches are much faster: 32 MiniLM examples
    took 39.7 s at batch 32, 4.6 s at batch 8 and 1.2 s at batch 2 on 2 CPU cores (the same H every time).
    """

    prior_precision: float = 1.0
    tune: str | None = "marglik"
    hessian_structure: str = "diag"
    batch_size: int = 2
    pred_type: str = "glm"
    val_grid: tuple = tuple(10.0 ** k for k in range(-2, 5))

    def __post_init__(self):
        if self.hessian_structure not in HESSIAN_STRUCTURES:
            raise ValueError(f"hessian_structure must be one of {HESSIAN_STRUCTURES} (our LoRA factors are plain "
                             f"parameters, which Kronecker factors do not cover), got {self.hessian_structure!r}.")
        if self.tune not in TUNING:
            raise ValueError(f"tune must be one of {TUNING}, got {self.tune!r}.")
        if self.pred_type not in PRED_TYPES:
            raise ValueError(f"pred_type must be one of {PRED_TYPES}, got {self.pred_type!r}.")
        if not self.prior_precision > 0:
            raise ValueError(f"prior_precision must be positive, got {self.prior_precision!r}.")


class _DictInput(nn.Module):
    """``model(**inputs)`` called as ``wrapper(batch)``, the way laplace-torch calls a model with dict inputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"}).float()


class _Batches:
    """A ClassificationData as laplace-torch's loader: dict batches (inputs + ``labels``) on the model's device."""

    def __init__(self, data, batch_size: int, device: torch.device):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.dataset = range(len(data))       # laplace-torch reads N as len(loader.dataset)

    def __iter__(self):
        for start in range(0, len(self.data), self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, len(self.data)))
            batch = config.to_device(dict(self.data.inputs(idx)), self.device)
            batch["labels"] = self.data.labels[idx].to(self.device)
            yield batch

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)


#: torch.func's note that it loops over examples where an operation has no batching rule (fused attention's CPU
#: backward): true, harmless, and printed on every Jacobian.
_VMAP_FALLBACK = "There is a performance drop because we have not yet implemented the batching rule"


def _laplace_library():
    try:
        with warnings.catch_warnings():   # linear_operator, imported by laplace-torch, still uses torch.jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            import laplace
    except ImportError:
        raise ImportError("Laplace-LoRA needs laplace-torch: pip install laplace-torch "
                          "(on a CPU-only torch, add --no-deps and its pure-Python needs; see the Makefile).") from None
    return laplace


class LaplaceLoRA:
    """A fitted Laplace posterior over a model's trainable tensors; a predictive method (``predict_samples``).

    ``fit_seconds`` is the time of the curvature pass and λ's tuning (for a fit loaded from the cache, the time it
    took when it was made); ``from_cache`` says which; ``prior_precision`` is the λ in use.
    """

    def __init__(self, model: nn.Module, posterior, cfg: LaplaceConfig, seed: int = 0, fit_seconds: float = 0.0,
                 from_cache: bool = False):
        self.model, self.posterior, self.cfg, self.seed, self.fit_seconds = model, posterior, cfg, seed, fit_seconds
        self.from_cache = from_cache

    @property
    def prior_precision(self) -> float:
        return float(self.posterior.prior_precision.reshape(-1)[0])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """The diagonal of Σ, (P,), in the order of the model's trainable parameters."""
        return self.posterior.posterior_variance.detach().cpu()

    def cache_description(self) -> dict:
        """What the samples depend on, for the prediction cache (the laplace-torch object itself is not describable)."""
        return {"model": self.model, "mean": self.posterior.mean.detach(),
                "precision": self.posterior.posterior_precision.detach(),
                "prior_precision": self.posterior.prior_precision.detach(), "cfg": self.cfg, "seed": self.seed,
                "glm draws": "per example"}

    @torch.no_grad()
    def predict_samples(self, inputs: dict, S: int) -> torch.Tensor:
        if S < 1:
            raise ValueError(f"S must be ≥ 1, got {S}.")
        device = config.model_device(self.model)
        batch = config.to_device(dict(inputs), device)
        if self.cfg.pred_type == "nn":
            generator = torch.Generator(device=device).manual_seed(self.seed)   # the same S draws for every batch
            with eval_mode(self.model):
                logits = self.posterior.functional_samples(batch, pred_type="nn", n_samples=S, generator=generator)
            return logits.float().softmax(-1).cpu()
        # glm: Jacobians again, so a few examples at a time (see LaplaceConfig.batch_size)
        n = batch_rows(batch)
        examples, chunks = noise.current_examples(n), []
        for start in range(0, n, self.cfg.batch_size):
            part = {k: v[start:start + self.cfg.batch_size] if torch.is_tensor(v) and v.dim() and v.shape[0] == n else v
                    for k, v in batch.items()}
            with eval_mode(self.model), torch.enable_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_VMAP_FALLBACK)
                f_mu, f_var = self.posterior._glm_predictive_distribution(part)   # (B, C), (B, C, C)
            chunks.append(self._glm_draws(f_mu.detach(), f_var.detach(), S, examples[start:start + self.cfg.batch_size]))
        return torch.cat(chunks, dim=1).float().softmax(-1).cpu()

    def _glm_draws(self, f_mu: torch.Tensor, f_var: torch.Tensor, S: int, examples: list[int]) -> torch.Tensor:
        """S draws of the logits, (S, B, C): f_mu + L z with L Lᵀ = f_var and z ~ N(0, I_C) drawn per example
        (``noise.per_example``: seeded by the seed and the example's index in its dataset), so an example's draws do
        not depend on the batch it is in. (laplace-torch's sampler draws one z for a whole batch from one generator.)"""
        scale = torch.linalg.cholesky(f_var)
        with noise.per_example(self.seed, examples, copies=1):                                # CPU generators
            z = noise.normal((len(examples), f_mu.shape[1], S), f_mu.dtype, f_mu.device)        # (B, C, S)
        return (f_mu.unsqueeze(-1) + scale @ z).permute(2, 0, 1)


def fit_laplace(model: nn.Module, train_data, cfg: LaplaceConfig = LaplaceConfig(), val_data=None,
                seed: int = 0, cache_key: dict | None = None) -> LaplaceLoRA:
    """Fit a diagonal-GGN Laplace posterior at the model's current (trained) trainable tensors.

    ``train_data`` gives H (one pass, ``cfg.batch_size`` at a time); ``val_data`` is needed for ``tune="val"``,
    which picks λ from ``cfg.val_grid`` by the validation NLL of the predictive (S = 16, ``cfg.pred_type``).
    The model is left as it was (the posterior mean is its current state). With ``cache_key`` (a dict naming the
    fit, as for ``train.fit``), the fit is looked up in the cache and the shipped checkpoints first, and stored after.
    """
    _laplace_library()   # a clear error, before any work, where laplace-torch is missing
    if cfg.tune == "val" and val_data is None:
        raise ValueError("tune='val' picks the prior precision on validation data: pass val_data.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable tensors: inject LoRA (and train it) before fitting a Laplace posterior.")
    path = key = None
    if cache_key is not None:
        path, key = _cache_path(model, train_data, val_data, cfg, cache_key)
        cached = shipped.load_cached(path, key, lambda candidate: _load(candidate, model, cfg, seed))
        if cached is not None:
            return cached
    start = time.perf_counter()
    posterior = _new_posterior(model, cfg)
    with eval_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_VMAP_FALLBACK)
        posterior.fit(_Batches(train_data, cfg.batch_size, config.model_device(model)))
    result = LaplaceLoRA(model, posterior, cfg, seed=seed)
    if cfg.tune == "marglik":
        with warnings.catch_warnings():   # laplace-torch reminds of the probit link, which the marginal likelihood never uses
            warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
            posterior.optimize_prior_precision(method="marglik", n_steps=100, lr=0.1)
    elif cfg.tune == "val":
        scores = {}
        for prior in cfg.val_grid:
            posterior.prior_precision = float(prior)
            probs = batched_logits(lambda inputs: result.predict_samples(inputs, 16).mean(0), val_data)
            scores[prior] = metrics.nll(probs, val_data.labels)
        posterior.prior_precision = float(min(scores, key=scores.get))
    result.fit_seconds = time.perf_counter() - start
    if path is not None:
        _save(path, key, result)
        shipped.record(path, key)
    return result


def _new_posterior(model: nn.Module, cfg: LaplaceConfig):
    """laplace-torch's diagonal Laplace over the model's trainable tensors, not fitted yet."""
    return _laplace_library().Laplace(_DictInput(model), "classification", subset_of_weights="all",
                                      hessian_structure=cfg.hessian_structure, prior_precision=cfg.prior_precision,
                                      dict_key_x="input_ids", dict_key_y="labels")


# ---- fit-or-load cache (the adapters' cache: ``cache_dir("adapters")``, shipped with a notebook's checkpoints) ----

def _cache_path(model, train_data, val_data, cfg: LaplaceConfig, cache_key: dict):
    """The fit's cache path (named by the digest of its key) and the key: everything H and λ depend on."""
    from importlib.metadata import version

    from .prediction_cache import model_digest

    return shipped.cache_path({"key": cache_key, "laplace": dataclasses.asdict(cfg), "model": model_recipe(model),
                               "trainable": model_digest(model)["trainable"], "train": train_data.fingerprint(),
                               "val": val_data.fingerprint() if cfg.tune == "val" else None,
                               "device": config.model_device(model).type, "laplace-torch": version("laplace-torch"),
                               "version": __version__})


def _save(path: Path, key: dict, fit: LaplaceLoRA) -> None:
    posterior = fit.posterior
    tensors = {"H": posterior.H.detach(), "loss": torch.as_tensor(posterior.loss).detach().reshape(1),
               "prior_precision": posterior.prior_precision.detach()}
    meta = {"key": key, "fit": {"n_data": int(posterior.n_data), "n_outputs": int(posterior.n_outputs),
                                "fit_seconds": fit.fit_seconds}}
    config.write_atomically(path.with_suffix(".safetensors"),
                            lambda tmp: save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp)))
    config.write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))


def _load(path: Path, model: nn.Module, cfg: LaplaceConfig, seed: int) -> LaplaceLoRA | None:
    """The cached fit, rebuilt as ``posterior.fit`` and the tuning leave it: H, loss, N, C, mean and λ."""
    from torch.nn.utils import parameters_to_vector

    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (weights.exists() and meta_path.exists()):
        return None
    try:
        tensors, meta = load_file(str(weights)), json.loads(meta_path.read_text())["fit"]
        posterior = _new_posterior(model, cfg)
        if tensors["H"].shape != (posterior.n_params,):
            raise ValueError(f"H has shape {tuple(tensors['H'].shape)} for {posterior.n_params} parameters")
    except Exception as err:
        warnings.warn(f"cached Laplace fit {weights.name} is unreadable ({type(err).__name__}: {err}); fitting again.")
        return None
    device = config.model_device(model)
    posterior.H = tensors["H"].to(device)
    posterior.loss = tensors["loss"].to(device)[0]
    posterior.n_data, posterior.n_outputs = meta["n_data"], meta["n_outputs"]
    posterior.model.output_size = meta["n_outputs"]
    posterior.mean = parameters_to_vector(posterior.params).detach()
    posterior.prior_precision = tensors["prior_precision"].to(device)
    return LaplaceLoRA(model, posterior, cfg, seed=seed, fit_seconds=meta["fit_seconds"], from_cache=True)
