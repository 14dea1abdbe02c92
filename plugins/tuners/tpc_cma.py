"""TPC-CMA (cross-modal alignment with a three-phase curriculum): OUR RECONSTRUCTION, not the
paper's code.

Liu et al., "The Geometry of Compromise: Unlocking Generative Capabilities via Controllable
Modality Alignment" (arXiv 2604.00279) decompose the modality gap into a centroid gap and a
distribution gap and close both with a loss weighted by alpha that follows a "three-phase
curriculum with gradient-aware scheduling". No code is public and the method section was not
available (methods.md section 2.2), so every formula below is a design decision of this project:

- loss ``L = L_task + α(t)·(λ_c·G_C² + λ_d·L_dist)``:
  - ``L_task``: CE over ``exp(logit_scale)·cos(img, class_txt)`` (fixed class prompts);
  - ``G_C = ‖mean(x) − mean(t)‖₂`` over the L2-normalised image embeddings x of the batch and
    the normalised text embeddings t of their true-class prompts (the paired text of a
    classification dataset, methods.md section 7);
  - ``L_dist = ‖Σ_x − Σ_t‖_F²``, the moment-matching distance between the covariance matrices
    of the *centred* batch clouds (what is left once the centroids are aligned);
- curriculum over the optimisation steps: warm-up (first ``warmup_frac``, α = 0); ramp (next
  ``ramp_frac``): ``α_sched`` rises linearly from 0 to ``alpha_target`` and the applied weight is
  ``α_eff = min(α_sched, κ·‖∇L_task‖/‖∇L_align‖)`` (gradient norms over the trained parameters);
  hold (the rest): α = ``alpha_target``, while the cosine learning-rate schedule consolidates;
- trained parameters: an affine map on the output of each tower, ``x ↦ W x + b`` with W
  initialised to the identity and b to zero (one for images, one for texts). This is fine-tuning
  of the final projection layers, re-parametrised inside the current joint space, plus a bias
  that can move a modality's centroid; both towers stay frozen, so image features and class-text
  features are computed once and training is cheap. New class names go through the frozen text
  tower and the learned text map.

Defaults (ours): ``alpha_target`` 0.05, λ_c = λ_d = 1, κ = 1, warm-up 20 % / ramp 50 % / hold 30 %
of the steps, AdamW lr 1e-3 without weight decay (decay would pull W towards 0, not identity),
batch 32, 20 epochs, 1 warm-up epoch then cosine.
``TrainResult.extra`` reports the final alpha, the last batch's G_C and L_dist, and the centroid
gap of the training set before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advisor import tuning as T
from advisor.errors import TrainingError
from advisor.specs import TrainContext, TrainResult

from .builtin import TPC_CMA
from .defaults import tpc_cma as defaults


def centroid_gap(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖mean(x) − mean(t)‖₂ of two (B,d) clouds."""
    return torch.linalg.vector_norm(x.mean(0) - t.mean(0))


def distribution_gap(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖Σ_x − Σ_t‖_F² of the centred clouds (covariances normalised by B)."""
    xc = x - x.mean(0, keepdim=True)
    tc = t - t.mean(0, keepdim=True)
    n = x.shape[0]
    return torch.linalg.matrix_norm(xc.T @ xc / n - tc.T @ tc / n) ** 2


def alpha_schedule(step: int, total: int, alpha_target: float, warmup_frac: float, ramp_frac: float) -> tuple[str, float]:
    """(phase, scheduled alpha) at optimisation step ``step`` of ``total``."""
    w_end = int(round(warmup_frac * total))
    r_end = w_end + int(round(ramp_frac * total))
    if step < w_end:
        return "warmup", 0.0
    if step < r_end:
        return "ramp", alpha_target * (step - w_end + 1) / max(1, r_end - w_end)
    return "hold", alpha_target


class AffineMap(nn.Module):
    """x ↦ W x + b, identity at initialisation."""

    def __init__(self, dim: int, device: str):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim, device=device))
        self.bias = nn.Parameter(torch.zeros(dim, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 even under CUDA autocast: the map starts at the identity and moves by small steps.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.addmm(self.bias, x.float(), self.weight.T)


class AlignedAdapted:
    """The frozen model followed by the learned image and text maps."""

    def __init__(self, model: Any, image_map: AffineMap, text_map: AffineMap, device: str):
        self.model, self.image_map, self.text_map, self.device = model, image_map, text_map, device

    @torch.no_grad()
    def encode_image(self, pixels: Any) -> torch.Tensor:
        with T.autocast(self.device):
            feats = self.model.encode_image(torch.as_tensor(pixels).to(self.device)).float()
        return self.image_map(feats)

    @torch.no_grad()
    def image_features_from(self, base_features: Any) -> torch.Tensor:
        """The adapted features of images whose frozen-tower features are known (no encoding):
        what ``encode_image`` returns, from the untouched model's output."""
        return self.image_map(torch.as_tensor(base_features).to(self.device).float())

    @torch.no_grad()
    def class_text_features(self, class_names: Sequence[str], template: str) -> torch.Tensor:
        return self.text_map(T.encode_class_texts(self.model, class_names, template, self.device))

    def adapter_state(self) -> dict[str, torch.Tensor]:
        state = {f"image_map.{k}": v for k, v in self.image_map.state_dict().items()}
        state.update({f"text_map.{k}": v for k, v in self.text_map.state_dict().items()})
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in state.items()}


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    sq = sum(float(g.detach().pow(2).sum()) for g in grads if g is not None)
    return sq ** 0.5


def train(ctx: TrainContext) -> TrainResult:
    hp = T.resolve_hparams(TPC_CMA, defaults(ctx.shots), ctx)  # types and bounds: the registration
    if hp["warmup_frac"] + hp["ramp_frac"] > 1:
        raise TrainingError("tpc_cma: warmup_frac + ramp_frac must not exceed 1")
    pixels, labels = T.check_context(ctx)
    generator = T.seed_everything(ctx.seed)
    model = ctx.model
    model.eval()
    with T.frozen(model):
        img_feats = T.frozen_image_features(ctx, pixels)
        with torch.no_grad():
            txt_feats = T.encode_class_texts(model, ctx.class_names, ctx.template, ctx.device)
        scale = T.logit_scale_value(model).detach()
    labels = labels.to(ctx.device)
    dim = img_feats.shape[1]
    image_map, text_map = AffineMap(dim, ctx.device), AffineMap(txt_feats.shape[1], ctx.device)
    params = list(image_map.parameters()) + list(text_map.parameters())

    def train_gap() -> float:
        with torch.no_grad():
            x = F.normalize(image_map(img_feats), dim=-1)
            t = F.normalize(text_map(txt_feats), dim=-1)[labels]
            return float(centroid_gap(x, t))

    gap_before = train_gap()
    state: dict[str, float] = {"alpha": 0.0, "gc": float("nan"), "dist": float("nan")}

    def loss_fn(idx: torch.Tensor, step: int, total: int) -> torch.Tensor:
        idx = idx.to(ctx.device)
        img = image_map(img_feats[idx])
        txt = text_map(txt_feats)
        task = T.clip_loss(img, txt, labels[idx], scale)
        x = F.normalize(img, dim=-1)
        t = F.normalize(txt, dim=-1)[labels[idx]]
        gc = centroid_gap(x, t)
        dist = distribution_gap(x, t)
        align = hp["lambda_centroid"] * gc**2 + hp["lambda_dist"] * dist
        phase, alpha = alpha_schedule(step, total, hp["alpha_target"], hp["warmup_frac"], hp["ramp_frac"])
        if phase == "ramp" and alpha > 0:
            g_align = _grad_norm(align, params)
            if g_align > 0:
                alpha = min(alpha, hp["kappa"] * _grad_norm(task, params) / g_align)
        state.update(alpha=alpha, gc=float(gc.detach()), dist=float(dist.detach()))
        return task + alpha * align

    adapted = AlignedAdapted(model, image_map, text_map, ctx.device)
    losses = T.fit(params, loss_fn, n=labels.numel(), hp=hp, ctx=ctx, generator=generator, adapted=adapted)
    image_map.requires_grad_(False)
    text_map.requires_grad_(False)
    return TrainResult(
        adapted=adapted,
        trainable_params=T.count_trainable(params),
        losses=losses,
        hparams=hp,
        extra={
            "final_alpha": state["alpha"],
            "final_batch_centroid_gap": state["gc"],
            "final_batch_dist_gap": state["dist"],
            "train_gap_before": gap_before,
            "train_gap_after": train_gap(),
        },
    )
