"""The training objectives: what one micro batch contributes to the loss (`objective.name`).

    sft    the answer tokens' cross-entropy, a mean over the global batch's answer tokens
    dpo    Direct Preference Optimization (Rafailov et al. 2023) against a reference model
    orpo   Odds Ratio Preference Optimization (Hong et al. 2024): no reference model

A micro batch gives `terms`, summed over its examples, and the loss is each term divided by
its count over the whole global batch (`counts`, known on the host from the samples: no
communication), so as with SFT the result does not depend on how the batch is split. The
preference objectives also give `figures`, per-pair sums that the sync point divides by the
global pair count: TRL's `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
`rewards/margins`, `logps/chosen`, `logps/rejected` (and ORPO's `nll_loss`, `log_odds_ratio`,
`log_odds_chosen`), computed as TRL's DPOTrainer and ORPOTrainer compute them.

A preference pair is one sample of two sequences, chosen then rejected, so both run in one
forward (padding-free: one row); the model returns each sequence's summed answer log-probability
(`trainer.loss`). DPO's reference is the same model with the LoRA adapters switched off, or, for
full weights, a frozen copy of the base (`Built.reference`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ftcore import records

ANSWER_TOKENS, PAIRS, CHOSEN_TOKENS = "answer_tokens", "pairs", "chosen_tokens"


def counts(samples, names) -> dict[str, int]:
    """The global batch's denominators `names` (answer tokens, pairs, the chosen answers' tokens),
    from host data; at least 1 each."""
    how = {ANSWER_TOKENS: lambda: sum(s.answer_tokens for s in samples),
           PAIRS: lambda: sum(len(s.seq_lens) for s in samples) // 2,
           CHOSEN_TOKENS: lambda: sum(s.chosen_tokens for s in samples)}
    return {name: max(1, how[name]()) for name in names}


class Objective:
    """SFT: the summed cross-entropy of the answer tokens."""

    terms: tuple[str, ...] = (ANSWER_TOKENS,)  # each term's global denominator (a `counts` key)
    figures: tuple[tuple[str, str], ...] = ()  # (record key, its denominator) of each reported figure
    sequences = False  # whether the batch needs each answer position's sequence (`collate.sequence_index`)

    def __init__(self, config, built):
        self.config, self.built = config, built

    def counts(self, samples) -> dict[str, int]:
        """The denominators of this objective's terms and figures over `samples` (a global batch)."""
        return counts(samples, dict.fromkeys([*self.terms, *(name for _, name in self.figures)]))

    def micro_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(terms, figures) of one micro batch: sums over its examples; figures carry no gradient."""
        return self.built.module(**batch).reshape(1), None

    def loss(self, terms: torch.Tensor, denominators: dict[str, int]) -> torch.Tensor:
        """The micro batch's share of the global batch's loss."""
        return sum(terms[i] / denominators[name] for i, name in enumerate(self.terms))


class DPO(Objective):
    """DPO's loss of the reward margin against the reference (TRL's `loss_type`: sigmoid, hinge, ipo)."""

    terms = (PAIRS,)
    figures = tuple((key, PAIRS) for key in records.PREFERENCE)
    sequences = True

    def reference_logps(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if self.built.reference is not None:  # full weights: the frozen copy of the base
                return self.built.reference(**batch)
            with self.built.lm.disable_adapter():  # LoRA: the base itself (peft's layers skip their adapters)
                return self.built.module(**batch)

    def micro_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        reference = self.reference_logps(batch)
        logps = self.built.module(**batch)
        losses, chosen_rewards, rejected_rewards = dpo_losses(
            logps[0::2], logps[1::2], reference[0::2], reference[1::2], self.config,
            batch["sequence_tokens"][0::2], batch["sequence_tokens"][1::2])
        figures = pair_figures(chosen_rewards, rejected_rewards, logps[0::2].detach(), logps[1::2].detach())
        return losses.sum().reshape(1), figures


def dpo_losses(chosen, rejected, ref_chosen, ref_rejected, config, chosen_tokens=None, rejected_tokens=None):
    """(loss, chosen reward, rejected reward) per pair, from summed answer log-probabilities, as TRL's
    DPOTrainer computes them. `label_smoothing` smooths the sigmoid loss as conservative DPO (cDPO), the
    original DPO code's and TRL's before 1.0 (TRL 1.x's `sigmoid` takes none; its `robust` reads the
    setting as Robust DPO instead)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    beta = config.beta
    if config.loss_type == "sigmoid":
        smoothing = config.label_smoothing
        losses = -F.logsigmoid(beta * delta) * (1 - smoothing) - F.logsigmoid(-beta * delta) * smoothing
    elif config.loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # ipo: margins per answer token, as TRL normalises them
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_figures(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> torch.Tensor:
    """Per-pair sums of TRL's figures, in `records.PREFERENCE`'s order."""
    columns = [chosen_rewards, rejected_rewards, (chosen_rewards > rejected_rewards).float(),
               chosen_rewards - rejected_rewards, chosen_logps, rejected_logps]
    return torch.stack([c.float().sum() for c in columns])


class ORPO(Objective):
    """ORPO: the chosen answers' cross-entropy (a mean over their tokens) minus beta × the mean
    log-sigmoid of the log odds ratio of the length-normalised log-probabilities (TRL's ORPOTrainer,
    whose cross-entropy also covers the prompt; ft's, like the paper's and ft's SFT, the answer only)."""

    terms = (CHOSEN_TOKENS, PAIRS)
    figures = (*((key, PAIRS) for key in records.PREFERENCE), (records.NLL_LOSS, CHOSEN_TOKENS),
             (records.LOG_ODDS_RATIO, PAIRS), (records.LOG_ODDS_CHOSEN, PAIRS))
    sequences = True

    def micro_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logps = self.built.module(**batch)
        tokens = batch["sequence_tokens"].clamp(min=1)
        mean = logps / tokens  # TRL's average_log_prob=True
        chosen, rejected = mean[0::2], mean[1::2]
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        ratio = F.logsigmoid(log_odds)
        nll = -logps[0::2].sum()
        terms = torch.stack([nll, -(self.config.beta * ratio).sum()])
        beta = self.config.beta
        figures = torch.cat([pair_figures(beta * chosen.detach(), beta * rejected.detach(), chosen.detach(),
                                          rejected.detach()),
                             torch.stack([nll.detach(), ratio.detach().sum(), log_odds.detach().sum()]).float()])
        return terms, figures


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012), as TRL's."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


OBJECTIVES = {"sft": Objective, "dpo": DPO, "orpo": ORPO}


def make(config, built) -> Objective:
    return OBJECTIVES[config.name](config, built)
