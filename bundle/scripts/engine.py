"""MONAI engines that train and validate DiffMIC."""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data.utils import set_rnd
from monai.engines import IterationEvents, SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.utils.enums import CommonKeys as Keys
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from .crossfit import FoldGuidance
from .inferer import DiffMICInferer, unwrap
from .losses import DiffMICLoss

__all__ = ["DiffMICTrainer", "DiffMICEvaluator", "JointValidationHandler", "scalar_terms"]


class _RealResumesOnly(logging.Filter):
    """MONAI fills an engine's state before its run, so ignite announces every fresh run as "resuming from
    iteration 0": only a resume from a later iteration is worth a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Engine run resuming from iteration 0,")


_REAL_RESUMES_ONLY = _RealResumesOnly()


class DiffMICTrainer(SupervisedTrainer):
    """Trains the guidance model and the diffusion head in one engine.

    Epochs ``1..warmup_epochs`` train the DCG alone with cross-entropy (``loss_function``). After that
    each iteration makes one DCG cross-entropy step (``dcg_optimizer``) and one step of the encoder and
    denoiser (``optimizer``) on the loss ``MSE(eps, eps_hat_fused) + mmd_weight * (MMD(eps,
    eps_hat_global) + MMD(eps, eps_hat_local))``, then updates the EMA. That loss is ``diffusion_loss``, a
    :class:`~scripts.losses.DiffMICLoss` built from ``mmd_weight``, ``mmd_bandwidths`` and
    ``prior_error_weight``. The DCG runs once per iteration: its detached softmaxes are the priors of the
    three streams, and the image features are computed once and shared by them. After ``dcg_epochs`` the
    DCG stops training: it runs in eval mode without gradients, so the encoder and denoiser learn on the
    fixed priors that validation and inference see. Without diffusion (the ``basic`` ablation) every
    epoch is a cross-entropy epoch. With ``fold_guidance`` (cross-fitted priors, :mod:`scripts.crossfit`) the
    DCG's copies take their cross-entropy steps beside it, each on the batch's images outside its fold
    (``loss_ce_folds``, not part of ``loss``), and the denoiser is conditioned on each image's out-of-fold
    eval-mode prior instead of the DCG's own.

    Each step fires MONAI's ``IterationEvents`` as :class:`~monai.engines.SupervisedTrainer` does:
    ``FORWARD_COMPLETED`` (``engine.state.output`` holds ``image``, ``label`` and ``pred``, the DCG's fused
    logits), ``LOSS_COMPLETED`` (``loss``, the iteration's loss so far, and its terms: ``loss_ce``, then
    ``loss_noise`` and ``loss_mmd``) and ``BACKWARD_COMPLETED`` (gradients in place, scaled under ``amp``,
    before clipping and the optimizer step); ``MODEL_COMPLETED`` fires once, when the iteration's steps are
    done. A joint iteration has two steps, the DCG's then the denoiser's, so it fires the first three events
    twice; with the DCG fixed (after ``dcg_epochs``) only the denoiser steps. The output's tensors are
    detached: a handler reads them, it cannot replace the loss that is backpropagated. A step that
    ``on_nonfinite: skip`` leaves out fires no ``BACKWARD_COMPLETED``.

    Args:
        optimizer: optimizer of the encoder and denoiser (``network.head``).
        dcg_optimizer: optimizer of the DCG model (``network.dcg``).
        loss_function: the DCG's classification loss, applied to the global, local and fused logits.
        warmup_epochs: DCG-only epochs before joint training.
        dcg_epochs: epochs the DCG trains, warm-up included (at least ``warmup_epochs``); None: every
            epoch. Ignored without diffusion.
        noise_draws: (t, eps) draws per image per denoiser step, batched into one pass.
        mmd_weight: lambda; 0 removes the MMD terms (ablation C2).
        mmd_bandwidths: RBF bandwidths of the MMD kernel.
        prior_error_weight: w; each image's denoising error is weighted by ``1 + w * (1 - p_prior(true class))``
            (DiffMICv2's code uses 10: the images its prior gets wrong are those the diffusion can fix); 0: equal.
        dcg_loss_terms: the DCG logits its cross-entropy is summed over, of ``global``, ``local`` and ``fused``
            (the authors' code: ``fused`` only); without the local stream, ``global``.
        grad_clip: max gradient norm of the encoder and denoiser; None for no clipping.
        seed: with a seed, every epoch starts by seeding torch, numpy, random and the data's random
            transforms from (seed, epoch), so that a run resumed after epoch k draws what an uninterrupted
            run draws (shuffling, augmentation, diffusion noise); None leaves the generators alone.
        on_nonfinite: what a NaN or infinite loss does: ``stop`` raises an error naming the epoch,
            iteration and loss term before the step is applied (checkpoints on disk stay as they were);
            ``skip`` leaves the step of that loss out with a warning (counted in ``skipped_steps``).
        dcg_network: the module the DCG steps call: ``network.dcg`` (None) or a DistributedDataParallel
            around it (configs/multi_gpu_train.yaml).
        head_network: likewise for ``network.head``, the encoder and denoiser.
        diffusion_loss: the encoder and denoiser's loss, a module with :class:`~scripts.losses.DiffMICLoss`'s
            call and ``streams`` (train.yaml's ``train#diffusion_loss``); None builds a DiffMICLoss from
            ``mmd_weight``, ``mmd_bandwidths`` and ``prior_error_weight`` (ignored when a loss is given).
        fold_guidance: a :class:`~scripts.crossfit.FoldGuidance` for cross-fitted priors (its copies' parameters
            in ``dcg_optimizer``, every batch with the ``id`` of its images); None or an empty one: the DCG's
            own priors. Ignored without diffusion.
        other arguments: as :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        *args,
        dcg_optimizer: Optimizer,
        warmup_epochs: int = 10,
        dcg_epochs: int | None = None,
        noise_draws: int = 1,
        mmd_weight: float = 0.5,
        mmd_bandwidths: Sequence[float] = (1.0,),
        grad_clip: float | None = 1.0,
        seed: int | None = None,
        on_nonfinite: str = "stop",
        prior_mode: str = "train",
        prior_error_weight: float = 0.0,
        dcg_loss_terms: Sequence[str] = ("global", "local", "fused"),
        dcg_network: torch.nn.Module | None = None,
        head_network: torch.nn.Module | None = None,
        diffusion_loss: torch.nn.Module | None = None,
        fold_guidance: FoldGuidance | None = None,
        **kwargs,
    ) -> None:
        if dcg_epochs is not None and dcg_epochs < warmup_epochs:
            raise ValueError(
                f"dcg_epochs ({dcg_epochs}) must be at least warmup_epochs ({warmup_epochs}): "
                "the warm-up trains the DCG alone"
            )
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_REAL_RESUMES_ONLY)
        # the denoiser's schedule counts the DCG warm-up, during which its optimizer is idle by design
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer")
        loader = self.data_loader
        if isinstance(loader, DataLoader) and len(loader) == 0:  # drop_last with fewer images than one batch
            raise ValueError(
                f"the training split has {len(loader.sampler)} image(s) for this process, fewer than batch_size "
                f"({loader.batch_size}): an incomplete last batch is dropped (BatchNorm needs 2 rows or more), so "
                f"nothing would train; lower --batch_size to at most {max(len(loader.sampler), 2)} or add images"
            )
        self.dcg_network = dcg_network
        self.head_network = head_network
        self.seed = seed
        if seed is not None:
            self.add_event_handler(Events.EPOCH_STARTED, self.reseed)
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        if prior_mode not in ("train", "eval"):
            raise ValueError(f"prior_mode must be 'train' or 'eval', got {prior_mode!r}")
        self.prior_mode = prior_mode
        unknown = sorted(set(dcg_loss_terms) - {"global", "local", "fused"})
        if unknown or not dcg_loss_terms:
            raise ValueError(f"dcg_loss_terms must list some of global, local and fused, got {list(dcg_loss_terms)}")
        self.dcg_loss_terms = tuple(dcg_loss_terms)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self.dcg_optimizer = dcg_optimizer
        self.warmup_epochs = warmup_epochs
        self.dcg_epochs = dcg_epochs
        self.noise_draws = noise_draws
        self.diffusion_loss = diffusion_loss or DiffMICLoss(mmd_weight, mmd_bandwidths, prior_error_weight)
        self.grad_clip = grad_clip
        self.fold_guidance = fold_guidance if fold_guidance is not None and fold_guidance.active else None
        if self.fold_guidance is not None:
            optimized = {id(p) for group in dcg_optimizer.param_groups for p in group["params"]}
            if any(id(p) not in optimized for p in self.fold_guidance.parameters()):
                raise ValueError(
                    "fold_guidance's DCG copies must train with the DCG: put their parameters in dcg_optimizer "
                    "(train.yaml: train#dcg_optimizer#params)"
                )

    def in_warmup(self) -> bool:
        """True while the DCG trains alone (always, without diffusion)."""
        return self.state.epoch <= self.warmup_epochs or not unwrap(self.network).use_diffusion

    def dcg_frozen(self) -> bool:
        """True once the DCG has trained its ``dcg_epochs`` (never without diffusion)."""
        return self.dcg_epochs is not None and self.state.epoch > self.dcg_epochs and not self.in_warmup()

    def reseed(self, engine: DiffMICTrainer | None = None) -> int:
        """Seeds every generator training draws from with a seed derived from (seed, epoch); returns it.

        Runs at each epoch's start, before the epoch's data iterator exists (ignite creates it after
        EPOCH_STARTED), so the shuffle order, the augmentation and the diffusion noise of an epoch depend
        on the seed and the epoch alone.
        """
        key = f"{self.seed}:epoch:{self.state.epoch}"
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            key += f":rank:{torch.distributed.get_rank()}"  # each process augments its own images differently
        epoch_seed = zlib.crc32(key.encode())
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed)
        random.seed(epoch_seed)
        loader = self.data_loader
        if isinstance(loader, torch.utils.data.DataLoader):
            set_rnd(loader.dataset, epoch_seed)
        return epoch_seed

    def finite(self, **terms: torch.Tensor) -> bool:
        """Whether every loss term is finite; if not, stops training or counts a skipped step (``on_nonfinite``)."""
        bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v).all()}
        if not bad:
            return True
        state = self.state
        within = (state.iteration - 1) % state.epoch_length + 1 if state.epoch_length else state.iteration
        message = (
            f"non-finite loss at epoch {state.epoch}, iteration {state.iteration} ({within} of the epoch): "
            + ", ".join(f"{k} = {v}" for k, v in bad.items())
        )
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.logger.warning(f"{message}; its steps are skipped (on_nonfinite: skip, {self.skipped_steps} so far)")
            return False
        raise FloatingPointError(
            f"{message}. Training stopped before this step was applied; the latest checkpoint and model.pt on disk "
            "are those of the last completed epoch. Check the images for NaN or infinite values, lower the learning "
            "rates, or set on_nonfinite: skip to leave such steps out."
        )

    def _iteration(self, engine: DiffMICTrainer, batchdata: dict[str, torch.Tensor]) -> dict | list[dict]:
        """One iteration: a DCG step (or, after ``dcg_epochs``, its fixed priors), then (after the warm-up) an
        encoder and denoiser step; returns the output."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        labels = labels.reshape(-1).long()
        model = unwrap(engine.network)
        engine.network.train()
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: labels}  # as MONAI's trainer, before the forward
        folds = engine._folds(model, batchdata, images.device)
        priors = engine._priors(model, images, labels, folds)
        if priors is not None:
            engine._denoiser_step(model, images, labels, priors)
        # as MONAI's engines: decollation (decollate: true) and postprocessing run on this event
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _folds(self, model: torch.nn.Module, batchdata: dict, device: torch.device) -> torch.Tensor | None:
        """The fold of each image of the batch when the priors are cross-fitted (copies in train mode), else None."""
        if self.fold_guidance is None or not model.use_diffusion:
            return None
        if "id" not in batchdata:
            raise KeyError("batch without 'id': cross-fitted priors (prior_folds) find each image's fold by its id")
        self.fold_guidance.train()
        return self.fold_guidance.folds(batchdata["id"], device)

    def _priors(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor | None
    ) -> dict[str, torch.Tensor] | None:
        """The priors the denoiser learns from in this iteration, after the DCG's own step while it trains.

        Returns:
            the fused, global and local priors, or None when the denoiser takes no step: in the warm-up, or
            when ``on_nonfinite: skip`` left the DCG step out.
        """
        frozen = self.dcg_frozen()
        guidance = self._fixed_guidance(model, images) if frozen else self._dcg_step(model, images, labels, folds)
        if guidance is None or self.in_warmup():
            return None
        if folds is not None:  # each image's prior from the copy that did not train on it
            return self.fold_guidance.priors(images, folds, self._dcg_forward)
        if self.prior_mode == "eval" and not frozen:  # the priors validation sees, not the batch-statistics ones
            guidance = self._eval_guidance(model, images)
        return model.priors(guidance)

    def _dcg_forward(self, dcg: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """A DCG's outputs on images through the inferer, under autocast when ``amp`` is on, in float32."""
        with self.autocast():
            return _float32(self.inferer(images, dcg))

    def _fixed_guidance(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DCG outputs of a DCG that no longer trains: eval mode, as validation computes its priors. No step,
        so no step events: the iteration's loss starts at a zero cross-entropy."""
        guidance = self._eval_guidance(model, images)
        output = self.state.output
        output[Keys.PRED] = guidance["fused"]
        output[Keys.LOSS] = torch.zeros((), device=images.device)
        output["lr_dcg"] = 0.0
        return guidance

    def _eval_guidance(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DCG's outputs in eval mode (running BatchNorm statistics) and without gradients: the priors that
        validation and inference compute, in float32."""
        model.dcg.eval()
        with torch.no_grad():
            guidance = self._dcg_forward(model.dcg, images)
        model.dcg.train()
        return guidance

    def _dcg_step(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor | None = None
    ) -> dict | None:
        """One DCG cross-entropy step whose forward also gives the diffusion priors; with ``folds``, the DCG copies'
        steps on the images outside their folds in the same backward pass (each copy's gradient is its own loss's).

        Returns:
            the DCG outputs (logits and priors), or None when the cross-entropy was not finite and
            ``on_nonfinite: skip`` left the step out.
        """
        # a skipped step must not leave its batch in the BatchNorm statistics either
        saved_dcg = []
        if self.on_nonfinite == "skip":
            saved_dcg = _snapshot(model.dcg) + (_snapshot(self.fold_guidance) if folds is not None else [])
        guidance = self._dcg_forward(self.dcg_network or model.dcg, images)
        output = self.state.output
        output[Keys.PRED] = guidance["fused"].detach()
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        # without the local stream the three logits are one tensor
        heads = self.dcg_loss_terms if model.dcg.use_local_stream else ("global",)
        loss_ce = sum(self.loss_function(guidance[k], labels) for k in heads)
        output["loss_ce"] = output[Keys.LOSS] = loss_ce.detach()
        terms = {"loss_ce": loss_ce}
        if folds is not None:
            copies = self.fold_guidance.training_outputs(images, folds, self._dcg_forward)
            terms["loss_ce_folds"] = sum(
                (self.loss_function(out[k], labels[rows]) for rows, out in copies for k in heads), images.new_zeros(())
            )
            output["loss_ce_folds"] = terms["loss_ce_folds"].detach()
        output["lr_dcg"] = self.dcg_optimizer.param_groups[0]["lr"]
        self.fire_event(IterationEvents.LOSS_COMPLETED)
        if not self.finite(**terms):
            _restore(saved_dcg)
            return None
        self._backward(sum(terms.values()), self.dcg_optimizer)
        self._optimizer_step(self.dcg_optimizer)
        return guidance

    def _denoiser_step(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, priors: dict[str, torch.Tensor]
    ) -> None:
        """One step of the encoder and denoiser on the diffusion loss (:attr:`diffusion_loss`), then the EMA update.

        The iteration's ``loss`` becomes the DCG's cross-entropy plus the diffusion loss, with its terms beside it.
        """
        # as for the DCG: a skipped step leaves the encoder's BatchNorm statistics as they were
        saved_head = _snapshot(model.head) if self.on_nonfinite == "skip" else []
        rows = self._denoise(model, images, labels, priors)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        terms = self.diffusion_loss(**rows)
        output = self.state.output
        loss_dcg = output[Keys.LOSS]  # the DCG's cross-entropy; zero once the DCG is fixed
        output.update(loss_noise=terms["loss_noise"].detach(), loss_mmd=terms["loss_mmd"].detach())
        output[Keys.LOSS] = loss_dcg + terms["loss"].detach()
        self.fire_event(IterationEvents.LOSS_COMPLETED)
        if not self.finite(loss_noise=terms["loss_noise"], loss_mmd=terms["loss_mmd"]):
            output[Keys.LOSS] = loss_dcg  # the iteration's loss is that of the steps it took
            _restore(saved_head)  # a DCG step of this iteration stays taken
            return
        self._backward(terms["loss"], self.optimizer)
        self._optimizer_step(self.optimizer, clip=model.head.parameters())
        model.update_ema()
        output["lr_denoiser"] = self.optimizer.param_groups[0]["lr"]

    def _denoise(
        self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, priors: dict[str, torch.Tensor]
    ) -> dict:
        """The denoiser's forward on noised labels: ``noise_draws`` (t, eps) draws per image, batched into one pass,
        for each prior stream the diffusion loss reads.

        Returns:
            the diffusion loss's arguments: ``predicted`` (per stream, float32), ``target`` (the noise, or y0 with
            ``prediction_type: sample``), and the fused ``prior`` and the ``labels`` of each row.
        """
        draws = self.noise_draws
        priors = {k: v.detach().repeat(draws, 1) for k, v in priors.items()}
        y0 = F.one_hot(labels, model.num_classes).float().repeat(draws, 1)
        t = torch.randint(0, model.diffusion.num_train_timesteps, (y0.shape[0],), device=y0.device)
        eps = torch.randn_like(y0)
        streams = self.diffusion_loss.streams
        y_t = torch.stack([model.diffusion.add_noise(y0, priors[k], eps, t) for k in streams])
        head = self.head_network or model.head
        with self.autocast():
            predicted = head(images, y_t, torch.stack([priors[k] for k in streams]), t)
        return {
            "predicted": dict(zip(streams, predicted.float(), strict=True)),  # the losses in float32
            "target": model.diffusion.target(y0, eps),
            "prior": priors["fused"],
            "labels": labels.repeat(draws),
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward passes when ``amp`` is on (CUDA), else nothing."""
        return torch.autocast("cuda", **self.amp_kwargs) if self.amp else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        """The gradients of ``loss`` (scaled under ``amp``) for ``optimizer``'s parameters; fires BACKWARD_COMPLETED
        as MONAI's trainer does, before the step."""
        optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        (self.scaler.scale(loss) if self.amp else loss).backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)

    def _optimizer_step(self, optimizer: Optimizer, clip=None) -> None:
        """One step of ``optimizer``, through the gradient scaler under ``amp``; ``clip``: the parameters whose
        gradient norm is clipped to ``grad_clip`` first (unscaled)."""
        if clip is not None and self.grad_clip is not None:
            if self.amp:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip, self.grad_clip)
        if self.amp:  # each optimizer has its own backward pass: step and update the scale per step
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def _float32(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The floating-point outputs in float32 (they may be float16 under ``amp``); the losses are computed in float32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}


def _snapshot(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each buffer of ``module`` (BatchNorm statistics) with a copy of its value."""
    return [(b, b.detach().clone()) for b in module.buffers()]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copies saved values back into buffers."""
    with torch.no_grad():
        for buffer, value in saved:
            buffer.copy_(value)


class DiffMICEvaluator(SupervisedEvaluator):
    """Evaluates DiffMIC or runs it on unlabelled images.

    Outputs per batch: ``pred``, the mean class probabilities of the denoised samples (see
    :mod:`scripts.uncertainty`); ``label_mean``, the samples' unclipped mean label vector (the denoised
    prediction's ranking score for AUCs: the clipped probabilities tie); ``prior``, ``prior_global``,
    ``prior_local``, the DCG's prior probabilities; ``denoised`` (B, S, C), ``vote``, ``agreement``,
    ``entropy``, ``saliency``, ``rois``;
    ``id``; and ``label`` when the batch has labels. ``inferer`` must be a :class:`DiffMICInferer`: the
    batch's ``id`` entries seed the sampling noise.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_REAL_RESUMES_ONLY)

    def _iteration(self, engine: DiffMICEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not isinstance(engine.inferer, DiffMICInferer):
            raise TypeError(f"DiffMICEvaluator needs a DiffMICInferer, got {type(engine.inferer).__name__}")
        if "id" not in batchdata:
            raise KeyError("batch without 'id': every datalist item needs an identifier (it seeds the sampling noise)")
        images, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        with engine.mode(engine.network):
            out = engine.inferer.outputs(images, engine.network, batchdata["id"])
        output = {
            Keys.IMAGE: images,
            Keys.PRED: out["probs"],
            "label_mean": out["denoised"].mean(1),
            "prior": out["fused"],
            "prior_global": out["global"],
            "prior_local": out["local"],
            "id": list(batchdata["id"]),
        }
        output.update({k: out[k] for k in ("denoised", "vote", "agreement", "entropy", "saliency", "rois")})
        if labels is not None:
            output[Keys.LABEL] = labels.reshape(-1).long()
        engine.state.output = output
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)  # as MONAI's evaluator: handlers see the raw output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollation and postprocessing, as in MONAI's engines
        return engine.state.output


def scalar_terms(output: dict | list[dict]) -> dict[str, float]:
    """The loss terms and learning rates of a trainer iteration, for StatsHandler and TensorBoard.

    Args:
        output: the iteration's output, or its per-image items (``decollate: true``, as MONAI's default
            tracking handlers expect), which all carry the same scalars.
    """
    first = output[0] if isinstance(output, list) else output
    return {k: float(v) for k, v in first.items() if k.startswith(("loss", "lr"))}


class JointValidationHandler(ValidationHandler):
    """Validates like :class:`~monai.handlers.ValidationHandler`, but not during the DCG warm-up of a
    diffusion model: its denoiser is untrained then, and a checkpoint must not be selected from it."""

    def __call__(self, engine: DiffMICTrainer) -> None:
        if unwrap(engine.network).use_diffusion and engine.state.epoch <= engine.warmup_epochs:
            return
        super().__call__(engine)
