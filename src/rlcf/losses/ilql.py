"""ILQL: Implicit Language Q-Learning (Snell, Kostrikov, Su, Yang, Levine 2022, arXiv:2206.11871), in the
single-trunk form of trlX (CarperAI) that the APA paper (Zhu et al. 2023, arXiv:2306.02231) runs as its offline
baseline: one transformer with an LM head (behaviour cloning), 1 or 2 Q heads over the vocabulary, their frozen
Polyak-averaged target copies, and a scalar V head."""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor, nn

from rlcf.config import ILQLConfig


def expectile_loss(u: Tensor, tau: float) -> Tensor:
    """Elementwise asymmetric square |tau - 1[u < 0]| u^2: weight tau on u >= 0, 1 - tau on u < 0."""
    weight = (tau - (u < 0).to(u.dtype)).abs()
    return weight * u.square()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, alpha: float) -> None:
    """In place, parameter by parameter: target <- alpha * source + (1 - alpha) * target.

    alpha = 1 copies source exactly, alpha = 0 leaves target exactly as it was (torch.lerp is exact at both
    ends). Parameters are paired in registration order and must match in number and shape; buffers untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"polyak_update: alpha must be in [0, 1], got {alpha}")
    tgt, src = list(target.parameters()), list(source.parameters())
    if len(tgt) != len(src):
        raise ValueError(f"polyak_update: target has {len(tgt)} parameters, source has {len(src)}")
    for i, (t, s) in enumerate(zip(tgt, src)):
        if t.shape != s.shape:
            raise ValueError(f"polyak_update: parameter {i} has shape {tuple(t.shape)} in target, "
                             f"{tuple(s.shape)} in source")
        t.lerp_(s.to(t.dtype), alpha)


def ilql_decode_logits(lm_logits: Tensor, target_qs: tuple[Tensor, ...], v: Tensor, beta: float) -> Tensor:
    """Decoding logits lm_logits + beta * (min_i targetQ_i(s, .) - V(s)), all detached.

    lm_logits and each target Q: [..., V]; v: [...] (one V per state). trlX adds the advantage to
    log_softmax(lm_logits) instead; that differs by a per-state constant, so softmax, top-k and temperature
    give the same distribution.
    """
    if len(target_qs) < 1:
        raise ValueError("ilql_decode_logits: need at least one target Q head")
    with torch.no_grad():
        q_min = reduce(torch.minimum, [q.detach() for q in target_qs])
        return lm_logits.detach() + beta * (q_min - v.detach().unsqueeze(-1))


def _check_inputs(lm_logits, qs, target_qs, vs, actions, mask, rewards, cfg) -> None:
    if lm_logits.ndim != 3:
        raise ValueError(f"ilql_loss: lm_logits must be [B, T, V], got shape {tuple(lm_logits.shape)}")
    B, T, _ = lm_logits.shape
    n_heads = 2 if cfg.two_qs else 1
    if len(qs) != n_heads or len(target_qs) != n_heads:
        raise ValueError(f"ilql_loss: two_qs={cfg.two_qs} needs {n_heads} Q and target Q heads, "
                         f"got {len(qs)} and {len(target_qs)}")
    for name, heads in (("qs", qs), ("target_qs", target_qs)):
        for i, q in enumerate(heads):
            if q.shape != lm_logits.shape:
                raise ValueError(f"ilql_loss: {name}[{i}] has shape {tuple(q.shape)}, "
                                 f"expected {tuple(lm_logits.shape)} like lm_logits")
    if tuple(vs.shape) != (B, T + 1):
        raise ValueError(f"ilql_loss: vs must be [B, T + 1] = {(B, T + 1)} (states 0..T), got {tuple(vs.shape)}")
    for name, x in (("actions", actions), ("mask", mask), ("rewards", rewards)):
        if tuple(x.shape) != (B, T):
            raise ValueError(f"ilql_loss: {name} must be [B, T] = {(B, T)}, got {tuple(x.shape)}")
    if not 0.0 <= cfg.tau <= 1.0:
        raise ValueError(f"ilql_loss: tau must be in [0, 1], got {cfg.tau}")


def ilql_loss(
    lm_logits: Tensor,
    qs: tuple[Tensor, ...],
    target_qs: tuple[Tensor, ...],
    vs: Tensor,
    actions: Tensor,
    mask: Tensor,
    rewards: Tensor,
    cfg: ILQLConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ILQL's four terms, each averaged over the N real response tokens (N = number of mask > 0, at least 1).

    Shapes: lm_logits, qs[i], target_qs[i] [B, T, V] at the T response states (state t predicts response
    token t); vs [B, T + 1] at states 0..T; actions (long), mask (0/1, right padding), rewards [B, T]
    (the sequence score on each row's last real token, 0 elsewhere). K = len(qs) = 2 if cfg.two_qs else 1.

      d_t   = 1 if t is the row's last real token (m_t = 1, m_{t+1} = 0, m_T := 0), else 0
      y_t   = r_t + gamma (1 - d_t) sg(V(s_{t+1}))                  TD target; V past the end not bootstrapped
      L_q   = sum_i (1/N) sum_t m_t (Q_i(s_t, a_t) - y_t)^2          summed over the K heads, as trlX does
      Qt_t  = min_i sg(targetQ_i(s_t, a_t))                          min over heads at the taken action
      L_v   = (1/N) sum_t m_t |tau - 1[u_t < 0]| u_t^2,  u_t = Qt_t - V(s_t)          (expectile regression)
      L_cql = sum_i (1/N) sum_t m_t [ logsumexp_a Q_i(s_t, a) - Q_i(s_t, a_t) ]       (CE of Q_i as logits)
      L_bc  = (1/N) sum_t m_t [ logsumexp_a logits(s_t, a) - logits(s_t, a_t) ]      (trlX: "awac")
      L     = L_q + L_v + cql_scale L_cql + awac_scale L_bc

    For the last real token, V(s_{t+1}) is read at vs[:, t+1] (the terminal state after the response, which
    is never trained) and REPLACED by 0 with torch.where, not multiplied by 0, so any value there (even
    inf/nan) has no effect. Padding (mask 0): pad actions are replaced by index 0 before gathering, and every
    per-token quantity is zeroed with torch.where, so pads leave the loss and the real-position gradients
    unchanged and get zero gradient. Any value, inf/nan included, is harmless in the [B, T] inputs (actions,
    rewards, vs); the [B, T, V] inputs must be finite at pads (a model's outputs are), because logsumexp runs
    over them unmasked (masking them would copy B*T*V elements).
    The BC term is unweighted: trlX weights it by exp(beta_train (Qt - V)) with beta_train = 0 by default,
    i.e. weight 1; cfg.beta is the DECODING beta (see ilql_decode_logits) and is not used here.
    target_qs and the bootstrap V(s_{t+1}) carry no gradient; V gets gradient from L_v only.
    Metrics: the four terms and the total, ilql/q_mean (mean of Q_i(s_t, a_t) over heads and real tokens),
    ilql/v_mean (mean V(s_t)), ilql/adv_mean (mean of Qt_t - V(s_t)), all over real tokens.
    """
    _check_inputs(lm_logits, qs, target_qs, vs, actions, mask, rewards, cfg)
    real = mask > 0  # [B, T]
    # Real next state: the token after t is a real response token. Otherwise t is terminal (done_t = 1).
    nxt_real = torch.zeros_like(real)
    nxt_real[:, :-1] = real[:, 1:]
    bootstrap = real & nxt_real
    n = real.sum().clamp(min=1)
    idx = torch.where(real, actions, torch.zeros_like(actions)).long().unsqueeze(-1)  # [B, T, 1]
    zero = torch.zeros((), dtype=lm_logits.dtype, device=lm_logits.device)

    def masked_avg(x: Tensor) -> Tensor:
        return torch.where(real, x, zero).sum() / n

    def cross_entropy(logits: Tensor) -> Tensor:  # [B, T]: logsumexp over the vocabulary minus the taken one
        return torch.logsumexp(logits, dim=-1) - logits.gather(-1, idx).squeeze(-1)

    # [B, T] quantities are zeroed at pads BEFORE any arithmetic, so even inf/nan there cannot reach the
    # loss or (as 0 * inf) the gradients.
    v_now = torch.where(real, vs[:, :-1], zero)
    v_next = torch.where(bootstrap, vs[:, 1:].detach(), zero)
    y = torch.where(real, rewards, zero) + cfg.gamma * v_next
    q_sa = [torch.where(real, q.gather(-1, idx).squeeze(-1), zero) for q in qs]
    loss_q = sum(masked_avg((q - y).square()) for q in q_sa)

    tq_min = reduce(torch.minimum, [tq.detach().gather(-1, idx).squeeze(-1) for tq in target_qs])
    u = torch.where(real, tq_min, zero) - v_now
    loss_v = masked_avg(expectile_loss(u, cfg.tau))

    loss_cql = sum(masked_avg(cross_entropy(q)) for q in qs)
    loss_awac = masked_avg(cross_entropy(lm_logits))
    loss = loss_q + loss_v + cfg.cql_scale * loss_cql + cfg.awac_scale * loss_awac

    with torch.no_grad():
        metrics = {
            "loss/q": loss_q.detach(),
            "loss/v": loss_v.detach(),
            "loss/cql": loss_cql.detach(),
            "loss/awac": loss_awac.detach(),
            "loss/total": loss.detach(),
            "ilql/q_mean": sum(masked_avg(q) for q in q_sa).detach() / len(q_sa),
            "ilql/v_mean": masked_avg(v_now).detach(),
            "ilql/adv_mean": masked_avg(u).detach(),
        }
    return loss, metrics
