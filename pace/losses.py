"""Spectrogram-based boundary-aware perturbation loss (PACE section 5.6).

Three parts:

* ``perturb``: N_p views of each fbank input (time-frequency masking as in the paper, plus additive
  noise and a mel-axis shift as the reviewer-requested alternatives);
* ``boundary_set``: samples whose views a temporary model misclassifies at a rate above rho_p;
* ``boundary_loss``: Eq. 8, pulling a sample's views toward its class centre and pushing the sample
  away from the nearest boundary point.

Inputs are normalised fbank batches (B, T, F): time frames by mel bins, as the fbank frontend gives
(``(logmel - mean) / (2 std)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

PerturbKind = Literal["mask", "noise", "pitch"]


# ---- perturbations -------------------------------------------------------------------------------


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) from ``generator`` on its own device (so seeded runs are reproducible)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _band(length: int, max_ratio: float, shape: tuple[int, ...], generator: torch.Generator | None,
          device: torch.device) -> torch.Tensor:
    """Boolean (*shape, length) mask of one contiguous band per entry, width uniform in [1, max].

    max = floor(max_ratio * length); max = 0 disables the band (all False).
    """
    max_w = int(max_ratio * length)
    pos = torch.arange(length, device=device)
    if max_w < 1:
        return torch.zeros(*shape, length, dtype=torch.bool, device=device)
    width = 1 + (_rand(shape, generator, device) * max_w).long().clamp_max(max_w - 1)
    start = (_rand(shape, generator, device) * (length - width + 1)).long().clamp_max(length - width)
    return (pos >= start[..., None]) & (pos < (start + width)[..., None])


def mask_views(x: torch.Tensor, n_views: int, generator: torch.Generator | None = None,
               r_t: float = 0.2, r_f: float = 0.2, mask_value: float = 0.0) -> torch.Tensor:
    """(B, T, F) -> (B, V, T, F): per view, one time band and one mel band set to ``mask_value``.

    Band widths are uniform in [1, floor(r * size)], positions uniform. The default value 0 is the
    normalised domain's zero, i.e. the dataset mean log-mel level (the usual SpecAugment fill once
    inputs are normalised); it is not silence.
    """
    b, t, f = x.shape
    tmask = _band(t, r_t, (b, n_views), generator, x.device)  # (B, V, T)
    fmask = _band(f, r_f, (b, n_views), generator, x.device)  # (B, V, F)
    masked = tmask[..., :, None] | fmask[..., None, :]
    return x[:, None].expand(b, n_views, t, f).masked_fill(masked, mask_value)


def noise_views(x: torch.Tensor, n_views: int, generator: torch.Generator | None = None,
                snr_db: float = 10.0) -> torch.Tensor:
    """(B, T, F) -> (B, V, T, F): additive white Gaussian noise at ``snr_db`` per clip.

    The SNR is in the feature domain: noise variance = mean(x^2) of the clip / 10^(snr_db/10),
    where x is the normalised fbank as given (not a waveform SNR).
    """
    b, rest = x.shape[0], tuple(x.shape[1:])  # (T, F); waveforms (B, S) too, a true waveform SNR
    power = x.detach().pow(2).mean(dim=tuple(range(1, x.dim()))).reshape(b, 1, *(1,) * len(rest))
    std = (power / 10.0 ** (snr_db / 10.0)).sqrt()
    gen_device = generator.device if generator is not None else x.device
    noise = torch.randn((b, n_views, *rest), generator=generator, device=gen_device, dtype=x.dtype)
    return x[:, None] + std * noise.to(x.device)


def mel_shift_views(x: torch.Tensor, n_views: int, generator: torch.Generator | None = None,
                    max_shift: int = 4) -> torch.Tensor:
    """(B, T, F) -> (B, V, T, F): content moved by k mel bins, k uniform in ±[1, max_shift].

    A cheap proxy for pitch shift: above ~1 kHz the mel scale is close to logarithmic, so a fixed
    bin offset is roughly a fixed frequency ratio (a semitone-scale shift for 128 bins); below it is
    closer to linear, and the whole spectral envelope (formants too) moves, as with resampling
    rather than a formant-preserving pitch shift. Bins vacated at the edge repeat the edge bin.
    """
    b, t, f = x.shape
    if max_shift < 1:
        raise ValueError(f"max_shift must be >= 1, got {max_shift}")
    # Uniform over the 2*max_shift non-zero offsets.
    u = (_rand((b, n_views), generator, x.device) * (2 * max_shift)).long().clamp_max(2 * max_shift - 1)
    shift = torch.where(u < max_shift, u - max_shift, u - max_shift + 1)  # (B, V), never 0
    src = (torch.arange(f, device=x.device) - shift[..., None]).clamp(0, f - 1)  # (B, V, F)
    index = src[:, :, None, :].expand(b, n_views, t, f)
    return torch.gather(x[:, None].expand(b, n_views, t, f), 3, index)


def wave_mask_views(x: torch.Tensor, n_views: int, generator: torch.Generator | None = None,
                    r_t: float = 0.2, r_f: float = 0.2, mask_value: float = 0.0) -> torch.Tensor:
    """Waveforms (B, S) -> (B, V, S): ``mask_views`` for raw audio. Per view, one band of the clip's
    spectrum (a contiguous run of rFFT bins, width uniform in [1, floor(r_f * bins)]) is removed, then
    one time segment (width uniform in [1, floor(r_t * S)] samples) is set to ``mask_value`` (0 =
    silence). ``r = 0`` disables that mask."""
    b, s = x.shape
    v = x[:, None].expand(b, n_views, s)
    bins = s // 2 + 1
    fmask = _band(bins, r_f, (b, n_views), generator, x.device)  # (B, V, bins)
    if fmask.any():
        spec = torch.fft.rfft(v.to(torch.float64), dim=-1).masked_fill(fmask, 0)
        v = torch.fft.irfft(spec, n=s, dim=-1).to(x.dtype)
    tmask = _band(s, r_t, (b, n_views), generator, x.device)  # (B, V, S)
    return v.masked_fill(tmask, mask_value)


def wave_pitch_views(x: torch.Tensor, n_views: int, generator: torch.Generator | None = None,
                     max_shift: int = 4) -> torch.Tensor:
    """Waveforms (B, S) -> (B, V, S): resampled by 2^(k/12), k uniform in ±[1, max_shift] semitones
    (linear interpolation; tempo and formants move with the pitch, as in ``mel_shift_views``; the
    end of a sped-up clip is zero)."""
    if max_shift < 1:
        raise ValueError(f"max_shift must be >= 1, got {max_shift}")
    b, s = x.shape
    u = (_rand((b, n_views), generator, x.device) * (2 * max_shift)).long().clamp_max(2 * max_shift - 1)
    semitones = torch.where(u < max_shift, u - max_shift, u - max_shift + 1).to(torch.float64)
    pos = torch.arange(s, device=x.device, dtype=torch.float64) * 2.0 ** (semitones[..., None] / 12.0)
    lo = pos.floor().long()
    frac = (pos - lo).to(x.dtype)
    padded = F.pad(x, (0, 1))[:, None].expand(b, n_views, s + 1)
    left = torch.gather(padded, 2, lo.clamp_max(s))
    right = torch.gather(padded, 2, (lo + 1).clamp_max(s))
    return torch.where(lo < s, left + frac * (right - left), torch.zeros((), dtype=x.dtype, device=x.device))


def perturb(x: torch.Tensor, kind: PerturbKind = "mask", n_views: int = 20,
            generator: torch.Generator | None = None, *, waveform: bool = False, **options: Any) -> torch.Tensor:
    """N_p perturbed views of each input: (B, T, F) -> (B, n_views, T, F); with ``waveform=True``,
    raw-audio batches (B, S) -> (B, n_views, S) (``wave_mask_views``, ``noise_views``,
    ``wave_pitch_views``, whose ``max_shift`` counts semitones instead of mel bins).

    ``kind``: ``"mask"`` (options r_t, r_f, mask_value; the paper's Q), ``"noise"`` (snr_db) or
    ``"pitch"`` (max_shift). All randomness comes from ``generator``, so a seeded generator gives
    the same views on every run; random numbers are drawn on the generator's device, so pass a
    generator on ``x``'s device to avoid a host-to-device copy of the noise.
    """
    if waveform:  # the same three kinds on raw audio
        if x.dim() != 2:
            raise ValueError(f"perturb(waveform=True) expects (B, S) waveform batches, got shape {tuple(x.shape)}")
        fns: dict[str, Callable[..., torch.Tensor]] = {
            "mask": wave_mask_views, "noise": noise_views, "pitch": wave_pitch_views,
        }
    else:
        if x.dim() != 3:
            raise ValueError(f"perturb expects (B, T, F) fbank batches (or waveform=True for (B, S) waveforms), "
                             f"got shape {tuple(x.shape)}")
        fns = {"mask": mask_views, "noise": noise_views, "pitch": mel_shift_views}
    if kind not in fns:
        raise ValueError(f"perturbation kind must be one of {sorted(fns)}, got {kind!r}")
    return fns[kind](x, n_views, generator, **options)


# ---- boundary set --------------------------------------------------------------------------------


@dataclass
class BoundarySet:
    indices: torch.Tensor  # (K,) long: positions in x of the boundary-prone samples
    points: torch.Tensor  # (K, D): their feature points b (detached)
    labels: torch.Tensor  # (K,): their labels
    #: (N,): misclassification rate over each sample's evaluated views (points="clean" stops
    #: evaluating a sample once its membership is decided, so this is over the views up to then)
    error_rate: torch.Tensor
    #: (N, D): every sample's candidate point (points="clean": its clean feature, which callers can
    #: reuse instead of a second forward pass)
    candidates: torch.Tensor | None = None
    #: perturbed views passed through the model (N * n_views without the early decision)
    views_evaluated: int = 0
    #: the perturbation kind the views were drawn with (a record for logs and tests)
    kind: str = ""

    def __len__(self) -> int:
        return int(self.indices.numel())


def wrong_views_needed(n_views: int, rho_p: float) -> int:
    """The fewest misclassified views w with w / n_views > rho_p (float64, as the rate is computed)."""
    return next((w for w in range(n_views + 1) if w / n_views > rho_p), n_views + 1)


@torch.no_grad()
def boundary_set(
    model_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    n_views: int = 20,
    rho_p: float = 0.3,
    kind: PerturbKind = "mask",
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    points: Literal["clean", "views"] = "clean",
    early_decision: bool = True,
    **perturb_options: Any,
) -> BoundarySet:
    """Samples whose perturbed views ``model_fn`` misclassifies at a rate > ``rho_p``.

    ``model_fn(batch) -> (features (n, D), logits (n, C))`` is the temporary model θ_temp (put it in
    eval mode first); ``y`` must index the logits' columns. ``points``: ``"clean"`` stores the
    feature of x_i itself as its boundary point (the paper's wording); ``"views"`` stores the mean
    feature of x_i's misclassified views, a point on the far side of the decision boundary.

    With ``points="clean"`` only whether a sample's rate exceeds ``rho_p`` matters, and its count of
    misclassified views only grows: ``early_decision`` stops passing a sample's views through the
    model once enough are wrong (in) or too few are left to get there (out). Every view is still
    drawn, so the generator's stream and the set are those of evaluating all of them; a sample the
    model gets right on every view costs ``n_views - wrong_views_needed + 1`` views instead of
    ``n_views`` (14 of 20 at rho_p = 0.3).
    """
    if points not in ("clean", "views"):
        raise ValueError(f"points must be 'clean' or 'views', got {points!r}")
    early = early_decision and points == "clean"
    rates, feats, evaluated = [], [], 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        yb = y[i : i + batch_size]
        if device is not None:
            xb, yb = xb.to(device), yb.to(device)
        views = perturb(xb, kind, n_views, generator, **perturb_options)  # (b, V, T, F): all drawn
        if early:
            rate, n = _decide_early(model_fn, views, yb, rho_p, batch_size)
        else:
            rate, point = _all_views(model_fn, views, yb, batch_size)
            n = views.shape[0] * n_views
        if points == "clean":
            point = model_fn(xb)[0]
        rates.append(rate.cpu())
        feats.append(point)
        evaluated += n
    error_rate = torch.cat(rates)
    idx = torch.nonzero(error_rate > rho_p).flatten()
    all_points = torch.cat(feats)
    return BoundarySet(idx, all_points[idx.to(all_points.device)].detach(), y[idx.to(y.device)], error_rate,
                       all_points.detach(), evaluated, kind=kind)


def _decide_early(model_fn, views: torch.Tensor, yb: torch.Tensor, rho_p: float,
                  chunk: int) -> tuple[torch.Tensor, int]:
    """Rates whose comparison with ``rho_p`` equals the full evaluation's: (rate (b,), views evaluated).

    Views go through the model in rounds (view j of every undecided sample, then j + 1, ...), a few
    views per round so that a round fills about ``chunk`` rows; a sample leaves once decided. An
    undecided-at-the-end sample has seen every view, so its rate is the full one.
    """
    b, V = views.shape[:2]
    need = wrong_views_needed(V, rho_p)
    wrong = torch.zeros(b, dtype=torch.long)
    seen = torch.zeros(b, dtype=torch.long)
    j, evaluated = 0, 0
    while j < V:
        open_ = ((wrong < need) & (wrong + (V - seen) >= need)).nonzero().flatten()
        if open_.numel() == 0:
            break
        step = max(1, min(V - j, chunk // open_.numel()))
        batch = views[open_.to(views.device), j : j + step].flatten(0, 1)  # (n_open * step, T, F)
        logits = torch.cat([model_fn(batch[k : k + chunk])[1] for k in range(0, batch.shape[0], chunk)])
        miss = (logits.argmax(dim=-1).reshape(open_.numel(), step) != yb[open_.to(yb.device), None]).cpu()
        wrong[open_] += miss.sum(dim=1)
        seen[open_] += step
        j += step
        evaluated += batch.shape[0]
    return wrong.to(torch.float64) / seen.clamp_min(1).to(torch.float64), evaluated


def _all_views(model_fn, views: torch.Tensor, yb: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view evaluated: (error rate (b,), mean feature of each sample's misclassified views (b, D))."""
    b, n_views = views.shape[:2]
    flat = views.flatten(0, 1)  # (b*V, T, F)
    outs = [model_fn(flat[j : j + chunk]) for j in range(0, flat.shape[0], chunk)]
    view_feats = torch.cat([o[0] for o in outs]).reshape(b, n_views, -1)
    wrong = torch.cat([o[1] for o in outs]).argmax(dim=-1).reshape(b, n_views) != yb[:, None]
    w = wrong.to(view_feats.dtype)[..., None]
    return wrong.to(torch.float64).mean(dim=1), (view_feats * w).sum(1) / w.sum(1).clamp_min(1.0)


# ---- loss ----------------------------------------------------------------------------------------


def boundary_loss(
    feat_views: torch.Tensor,
    labels: torch.Tensor,
    feat_anchor: torch.Tensor,
    boundary_points: torch.Tensor,
    class_centres: torch.Tensor,
    delta: float = 0.25,
    normalize: bool = False,
    anchor_index: torch.Tensor | None = None,
    boundary_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 8 averaged over the batch.

    L(i) = max(0, delta + mean_u ||f(u) - mu_c||^2 - min_b ||f(x_i) - b||^2)

    feat_views (B, V, D): features of x_i's perturbed views S_i; labels (B,): row of
    ``class_centres`` (C, D) holding mu_c; feat_anchor (B, D): f(x_i); boundary_points (K, D).
    ``normalize`` L2-normalises every feature and centre first (then squared distances lie in
    [0, 4], the scale at which delta = 0.25 is meaningful). ``anchor_index``/``boundary_index``
    (dataset positions of the batch samples and of the boundary points) exclude a sample's own
    boundary point from its min; a sample with no other point contributes 0. An empty boundary set
    gives a zero that is still connected to the graph.
    """
    if boundary_points.shape[0] == 0:
        return (feat_anchor.sum() + feat_views.sum()) * 0.0
    if normalize:
        feat_views, feat_anchor = F.normalize(feat_views, dim=-1), F.normalize(feat_anchor, dim=-1)
        boundary_points = F.normalize(boundary_points, dim=-1)
        class_centres = F.normalize(class_centres, dim=-1)
    mu = class_centres[labels]  # (B, D)
    pull = (feat_views - mu[:, None]).pow(2).sum(-1).mean(dim=1)  # (B,)
    d2 = (feat_anchor[:, None] - boundary_points[None]).pow(2).sum(-1)  # (B, K)
    if (anchor_index is None) != (boundary_index is None):
        raise ValueError("give both anchor_index and boundary_index, or neither")
    if anchor_index is not None:
        own = anchor_index.to(d2.device)[:, None] == boundary_index.to(d2.device)[None]
        d2 = d2.masked_fill(own, float("inf"))
    push = d2.min(dim=1).values
    return F.relu(delta + pull - push).mean()
