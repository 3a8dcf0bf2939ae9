"""One-step flow matching: a Linearizer velocity whose whole sampler collapses into one matrix.

``g(.; 0)`` encodes noise, ``g(.; 1)`` encodes data (one conditional network with shared weights,
or two networks). Training interpolates in the latent space, ``z_t = (1-t) z0 + t z1``, and a
time-conditioned operator (``a(t) I`` plus rank ``r``) predicts the clean latent,
``A_t z_t ~ z1``. Sampling integrates ``v(z, t) = (A_t z - z) / (1 - t)``; every step is linear
in ``z``, so ``T`` steps are one matrix ``B`` (``lincore.sampling.collapse``) and a sample is
``g^-1(B g(x0; 0); 1)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lincore._checks import check_int, check_tensor
from lincore.generators.interpolation import slerp
from lincore.generators.one_step_config import (
    COUPLINGS,
    FLOWS,
    PIXELS,
    LossWeights,
    OneStepConfig,
    max_rank,
)
from lincore.inn import (
    CouplingFlow,
    Flow,
    ImageFlow,
    InvertibleBlock,
    LogitPixels,
    MultiScaleImageFlow,
    Reshaped,
    max_levels,
)
from lincore.metrics import max_error
from lincore.operators.time_isotropic import TimeOperator, time_operator
from lincore.sampling import CollapsedSampler, Method, collapse, sample_latent

Perceptual = Callable[[Tensor, Tensor], Tensor]
"""``(prediction, target) -> scalar`` loss on data-domain tensors, e.g. an LPIPS network."""

LOG_2PI = math.log(2 * math.pi)
AUTO_LEVELS = 3
MAX_DENSE_LIKELIHOOD_DIM = 1024
"""Largest ``D`` for which the rank-only operator may train the one-step likelihood (its
collapse goes dense, ``D x D`` per step in the autograd graph)."""


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def image_levels(event_shape: tuple[int, ...], levels: int, depth: int) -> int:
    """Levels of the image flow: ``levels``, or for 0 as many as the shape allows, up to
    ``AUTO_LEVELS`` (28x28 digits: 2; 64x64 photos: 3) and one coupling each (``depth``)."""
    if levels:
        return levels
    return max(1, min(AUTO_LEVELS, max_levels(*event_shape), depth))


def uses_logit_pixels(cfg: OneStepConfig) -> bool:
    """``pixels: auto`` is the logit transform for the image flow, raw values otherwise."""
    return cfg.pixels == "logit" or (cfg.pixels == "auto" and cfg.flow == "image")


def uses_two_networks(cfg: OneStepConfig) -> bool:
    """``two_networks: auto`` is two for the image flow, one conditional ``g`` otherwise: an
    image flow warmed up as a plain flow of the data (``warmup_terms``) keeps a noise network
    of its own, where one shared network would first have to unlearn the data for the noise
    (``benchmarks/image_quality.py``: Fréchet 503 against 6,710 after the same warm-up)."""
    if cfg.two_networks == "auto":
        return cfg.flow == "image"
    return bool(cfg.two_networks)


class OneStepFlowMatching(nn.Module):
    """Flow matching with a Linearizer velocity: train with ``forward``, sample in one step.

    Args:
        g: the invertible network. Conditional (``conditional=True``) to serve both domains with
            shared weights, or unconditional with ``g_data`` given.
        operator: ``A_t`` on ``R^D`` with ``D = prod(g.event_shape)``: a ``TimeIsotropicLowRank``
            (``a(t) I`` plus rank ``r``; the collapsed sampler covers the latent space) or the
            original rank-only ``TimeLowRank``.
        g_data: a second network for the data domain; then ``g`` is the noise network.
        sigma: std of the latent noise in the two reconstruction terms (absolute units).
        weights: the loss weights.
        perceptual: optional extra loss on the two data-domain decodings (added to the pixel MSE),
            for a user-supplied perceptual network; nothing is downloaded here.
        steps: ``T`` of the sampler that the one-step likelihood term collapses.
        pixels: an optional fixed bijection at the data edge (``LogitPixels``): ``g(.; 1)`` then
            sees ``pixels(x)``, and every data-domain encoding, decoding and log-determinant goes
            through it, so samples, inversions and likelihoods stay in pixel space.
    """

    def __init__(
        self,
        g: Flow,
        operator: TimeOperator,
        *,
        g_data: Flow | None = None,
        sigma: float = 0.3,
        weights: LossWeights | None = None,
        perceptual: Perceptual | None = None,
        steps: int = 100,
        pixels: InvertibleBlock | None = None,
    ) -> None:
        super().__init__()
        if g_data is None and not g.conditional:
            raise ValueError(
                "g must be built with conditional=True to serve both noise and data, "
                "or pass a second network as g_data"
            )
        if g_data is not None and (g.conditional or g_data.conditional):
            raise ValueError("with two networks (g, g_data) both must be unconditional")
        if g_data is not None and g_data.event_shape != g.event_shape:
            raise ValueError(
                f"g and g_data must have the same event shape, "
                f"got {g.event_shape} and {g_data.event_shape}"
            )
        if operator.dim != g.dim:
            raise ValueError(
                f"operator acts on R^{operator.dim} but the latent dimension is {g.dim} "
                f"(= prod{g.event_shape}); build the operator with dim={g.dim}"
            )
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if (
            (weights or OneStepConfig().loss_weights()).one_step_likelihood
            and operator.kind == "low_rank"
            and operator.dim > MAX_DENSE_LIKELIHOOD_DIM
        ):
            raise ValueError(
                f"the one_step_likelihood term with the rank-only operator differentiates a dense "
                f"{operator.dim} x {operator.dim} collapse; use operator 'isotropic_psd' (its "
                f"collapse stays rank r), or set the weight to 0 above "
                f"D = {MAX_DENSE_LIKELIHOOD_DIM}"
            )
        self.g = g
        self.g_data = g_data
        self.operator = operator
        self.sigma = float(sigma)
        self.weights = weights or OneStepConfig().loss_weights()
        self.perceptual = perceptual
        self.steps = check_int("steps", steps, low=2)
        self.pixels = pixels

    @classmethod
    def build(
        cls,
        event_shape: tuple[int, ...],
        cfg: OneStepConfig | None = None,
        *,
        weights: LossWeights | None = None,
        seed: int = 0,
        steps: int = 100,
        **changes: Any,
    ) -> OneStepFlowMatching:
        """The standard model for data of ``event_shape`` from ``cfg`` (``params.yaml``'s
        ``model``; its fields can be changed by keyword, e.g. ``rank=4``).

        ``flow="coupling"`` flattens samples into a ``CouplingFlow`` (vectors, small images);
        ``flow="image"`` keeps ``(C, H, W)`` for an ``ImageFlow`` (call the model's
        ``initialize_from(data_batch)`` before training). ``operator`` is the kind of ``A_t``
        (``lincore.operators.OPERATOR_KINDS``); ``steps`` the ``T`` of the sampler whose
        likelihood the ``one_step_likelihood`` term trains (the one that will be shipped);
        ``weights`` replaces the ``w_*`` fields of ``cfg``.
        """
        cfg = dataclasses.replace(cfg or OneStepConfig(), **changes)
        weights = weights or cfg.loss_weights()
        rank, depth, hidden, flow = cfg.rank, cfg.depth, cfg.hidden, cfg.flow
        check_choice("flow", flow, FLOWS)
        check_choice("pixels", cfg.pixels, PIXELS)
        check_choice("coupling", cfg.coupling, COUPLINGS)
        operator, operator_hidden = cfg.operator, cfg.operator_hidden
        if cfg.two_networks not in (True, False, "auto"):
            raise ValueError(f"two_networks must be true, false or auto; got {cfg.two_networks!r}")
        two_networks, sigma = uses_two_networks(cfg), cfg.sigma
        dim = math.prod(event_shape)
        check_int("rank", rank, low=1, high=max_rank(event_shape))

        def net(conditional: bool, offset: int) -> Flow:
            torch.manual_seed(seed + offset)
            if flow == "coupling":
                body = CouplingFlow(
                    dim,
                    depth,
                    hidden,
                    conditional=conditional,
                    coupling=cfg.coupling,
                    seed=seed + 100 * offset,
                )
                return body if len(event_shape) == 1 else Reshaped(body, event_shape)
            if flow == "image":
                if len(event_shape) != 3:
                    raise ValueError(f"flow='image' needs (C, H, W) samples, got {event_shape}")
                c, h, w = event_shape
                levels = image_levels(event_shape, cfg.levels, depth)
                if levels == 1:
                    return ImageFlow(
                        c,
                        h,
                        w,
                        depth=depth,
                        hidden=hidden,
                        conditional=conditional,
                        coupling=cfg.coupling,
                        seed=seed,
                    )
                return MultiScaleImageFlow(
                    c,
                    h,
                    w,
                    levels=levels,
                    depth=depth,
                    hidden=hidden,
                    conditional=conditional,
                    coupling=cfg.coupling,
                    seed=seed,
                )
            raise AssertionError(flow)  # checked above

        g = net(not two_networks, 0)
        g_data = net(False, 1) if two_networks else None
        torch.manual_seed(seed + 2)
        op = time_operator(operator, dim, rank, hidden=operator_hidden)
        pixels = LogitPixels() if uses_logit_pixels(cfg) else None
        return cls(g, op, g_data=g_data, sigma=sigma, weights=weights, steps=steps, pixels=pixels)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.g.event_shape

    @property
    def dim(self) -> int:
        return self.g.dim

    # --- the two bijections -------------------------------------------------------------------
    def _net(self, domain: int) -> tuple[Flow, float | None]:
        if self.g_data is None:
            return self.g, float(domain)
        return (self.g_data if domain == 1 else self.g), None

    def encode(self, x: Tensor, domain: int) -> Tensor:
        """``g(x; domain)`` flattened to ``(B, D)``; domain 0 = noise, 1 = data."""
        net, cond = self._net(domain)
        if domain == 1 and self.pixels is not None:
            x = self.pixels(x)
        return net(x, cond=cond).flatten(1)

    def decode(self, z: Tensor, domain: int) -> Tensor:
        """``g^-1(z; domain)`` from ``(B, D)`` latents back to ``(B, *event_shape)``."""
        net, cond = self._net(domain)
        x = net.inverse(z.reshape(-1, *self.event_shape), cond=cond)
        if domain == 1 and self.pixels is not None:
            x = self.pixels.inverse(x)
        return x

    def encode_and_log_det(self, x: Tensor, domain: int) -> tuple[Tensor, Tensor]:
        """``g(x; domain)`` flattened and ``log|det|`` of the whole data-to-latent map."""
        net, cond = self._net(domain)
        edge = None
        if domain == 1 and self.pixels is not None:
            edge = self.pixels.forward_and_log_det(x)
            x = edge.out
        out = net.forward_and_log_det(x, cond=cond)
        log_det = out.log_det if edge is None else out.log_det + edge.log_det
        return out.out.flatten(1), log_det

    @torch.no_grad()
    def initialize_from(self, x1: Tensor) -> None:
        """Data-dependent ActNorm set-up: the data side from ``x1``, the noise side from
        ``N(0, I)`` noise of the same shape (one conditional ``g`` shares its ActNorms, so the
        data batch sets them). A no-op for flows without ActNorm."""
        # a private generator: set-up must not shift the global random stream training uses
        gen = torch.Generator(device=x1.device).manual_seed(0)
        noise = torch.randn(x1.shape, generator=gen, dtype=x1.dtype, device=x1.device)
        if self.pixels is not None:
            x1 = self.pixels(x1)
        for domain, x in ((1, x1), (0, noise)):
            net, cond = self._net(domain)
            net.initialize_from(x, cond=cond)

    @torch.no_grad()
    def roundtrip_error(self, x: Tensor, domain: int = 1) -> float:
        """``max|g^-1(g(x; domain); domain) - x|``: is ``g`` still a bijection at this precision?"""
        return max_error(self.decode(self.encode(x, domain), domain), x)

    # --- training -----------------------------------------------------------------------------
    def forward(
        self,
        x1: Tensor,
        x0: Tensor | None = None,
        t: Tensor | None = None,
        *,
        warmup: bool = False,
    ) -> dict[str, Tensor]:
        """All loss terms and their weighted sum ``"loss"``, in one call (one DDP forward).

        ``x1`` is a data batch; ``x0`` (noise) and ``t ~ U[0, 1)`` are drawn when not given.
        ``warmup=True`` computes the warm-up objective instead (``warmup_terms``).
        """
        check_tensor("x1", x1, self.event_shape)
        if warmup:
            return self.warmup_terms(x1)
        x0 = torch.randn_like(x1) if x0 is None else x0
        t = torch.rand(x1.shape[0], dtype=x1.dtype, device=x1.device) if t is None else t
        z0 = self.encode(x0, 0)
        z1, log_det = self.encode_and_log_det(x1, 1)
        zt = (1 - t)[:, None] * z0 + t[:, None] * z1
        z1_hat = self.operator(zt, t)
        x0_rec = self.decode(z0 + self.sigma * torch.randn_like(z0), 0)
        x1_rec = self.decode(z1 + self.sigma * torch.randn_like(z1), 1)
        x1_hat = self.decode(z1_hat, 1)
        terms = {
            "latent": (z1_hat - z1).pow(2).mean(),
            "noise_reconstruction": (x0_rec - x0).pow(2).mean(),
            "data_reconstruction": self._data_term(x1_rec, x1),
            "prediction": self._data_term(x1_hat, x1),
            "data_likelihood": self._gaussian_nll(z1, log_det),
        }
        w = self.weights
        if w.one_step_likelihood:
            b = collapse(self.operator, self.steps, "euler", grad=torch.is_grad_enabled())
            nll = -self._log_prob(b, z1, log_det).mean() / self.dim
            terms["one_step_likelihood"] = nll.to(x1.dtype)
        terms["loss"] = (
            w.latent * terms["latent"]
            + w.noise_reconstruction * terms["noise_reconstruction"]
            + w.data_reconstruction * terms["data_reconstruction"]
            + w.prediction * terms["prediction"]
            + w.data_likelihood * terms["data_likelihood"]
        )
        if w.one_step_likelihood:
            terms["loss"] = terms["loss"] + w.one_step_likelihood * terms["one_step_likelihood"]
        return terms

    def warmup_terms(self, x1: Tensor) -> dict[str, Tensor]:
        """The warm start: ``g(.; 1)`` trained alone as a plain normalizing flow of the data.

        The one-step sampler is linear in the latent space, so it can only carry ``N(0, I)``
        onto the data's latents once ``g(.; 1)`` has made them nearly Gaussian. Learning that
        first, by likelihood alone, costs one pass of ``g`` per step instead of the full
        objective's seven, and is what lets the image flow draw digits on a CPU budget
        (``benchmarks/image_quality.py``). With one conditional network, ``g(.; 0)`` shares the
        weights being trained, so it is kept a flow of ``N(0, I)`` onto itself by the same
        likelihood on noise; the operator waits (no gradient) for the full objective.
        """
        terms = {"data_likelihood": self._gaussian_nll(*self.encode_and_log_det(x1, 1))}
        loss = terms["data_likelihood"]
        if self.g_data is None:
            noise = self.encode_and_log_det(torch.randn_like(x1), 0)
            terms["noise_likelihood"] = self._gaussian_nll(*noise)
            loss = loss + terms["noise_likelihood"]
        terms["loss"] = loss
        return terms

    def _gaussian_nll(self, z: Tensor, log_det: Tensor) -> Tensor:
        """``-log N(z; 0, I) - log|det J|`` per dimension, without the ``log 2 pi`` constant: a
        domain's own likelihood as a flow onto ``N(0, I)``."""
        return 0.5 * z.pow(2).mean() - log_det.mean() / self.dim

    def _data_term(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = (pred - target).pow(2).mean()
        if self.perceptual is not None:
            loss = loss + self.perceptual(pred, target)
        return loss

    def loss(self, x1: Tensor) -> Tensor:
        return self(x1)["loss"]

    # --- sampling -----------------------------------------------------------------------------
    def noise(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of ``x0 ~ N(0, I)`` in the parameters' dtype and device."""
        check_int("n", n, low=1)
        ref = next(self.parameters())
        x = torch.randn(n, *self.event_shape, generator=generator, dtype=ref.dtype)
        return x.to(ref.device)

    @torch.no_grad()
    def sample(self, x0: Tensor, steps: int = 100, method: Method = "euler") -> Tensor:
        """The multi-step sampler, step by step: ``g^-1(z_T; 1)`` from ``z_0 = g(x0; 0)``."""
        return self.decode(sample_latent(self.operator, self.encode(x0, 0), steps, method), 1)

    def collapse(self, steps: int = 100, method: Method = "euler") -> CollapsedSampler:
        """The ``steps``-step sampler as one matrix ``B`` (float64, factored while rank < D)."""
        return collapse(self.operator, steps, method)

    @torch.no_grad()
    def sample_one_step(self, x0: Tensor, sampler: CollapsedSampler) -> Tensor:
        """``g^-1(B g(x0; 0); 1)``: one pass of ``g`` each way and one (factored) matmul."""
        return self.decode(sampler.apply(self.encode(x0, 0)), 1)

    @torch.no_grad()
    def invert(self, x1: Tensor, sampler: CollapsedSampler) -> Tensor:
        """A data sample back to the noise that generates it: ``g^-1(B^-1 g(x1; 1); 0)``."""
        return self.decode(sampler.solve(self.encode(x1, 1)), 0)

    @torch.no_grad()
    def interpolate(
        self, xa: Tensor, xb: Tensor, alphas: Tensor, sampler: CollapsedSampler
    ) -> Tensor:
        """Samples between two real data points, through their noise: ``(len(alphas), B, ...)``.

        Both are inverted to noise, the noises are joined by spherical interpolation (it keeps
        Gaussian noise at its typical norm), and each point is sampled in one step.
        """
        na, nb = self.invert(xa, sampler), self.invert(xb, sampler)
        return torch.stack(
            [self.sample_one_step(slerp(na, nb, a), sampler) for a in alphas.tolist()]
        )

    # --- exact likelihood ---------------------------------------------------------------------
    @torch.no_grad()
    def log_prob(self, x1: Tensor, sampler: CollapsedSampler) -> Tensor:
        """Exact ``log p(x1)`` (nats, per sample) of the one-step generator, a normalizing flow.

        ``x1 = g^-1(B g(e; 0); 1)`` with ``e ~ N(0, I)``, so with ``e = g^-1(B^-1 g(x1; 1); 0)``:
        ``log p = log N(e) - log|det J_g(e; 0)| - log|det B| + log|det J_g(x1; 1)|``.
        """
        return self._log_prob(sampler, *self.encode_and_log_det(x1, 1))

    def _log_prob(self, sampler: CollapsedSampler, z1: Tensor, log_det_data: Tensor) -> Tensor:
        e = self.decode(sampler.solve(z1), 0)
        _, log_det_noise = self.encode_and_log_det(e, 0)
        e = e.flatten(1).to(torch.float64)
        log_normal = -0.5 * (e.pow(2).sum(1) + self.dim * LOG_2PI)
        return (
            log_normal
            - log_det_noise.to(torch.float64)
            - sampler.logabsdet()
            + log_det_data.to(torch.float64)
        )
