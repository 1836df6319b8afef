"""The critic: the seeds' value head (hidden -> 2*hidden -> 1), alone or on a separate copy of the policy's trunk."""

from __future__ import annotations

import copy

from torch import nn


class ValueHead(nn.Module):
    """The seeds' critic head: hidden -> 2*hidden -> 1."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, 1))

    def forward(self, hidden_states):
        return self.net(hidden_states.float()).squeeze(-1)


class Critic(nn.Module):
    """A separate value network: a copy of the initial policy's trunk with a value head."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.trunk = copy.deepcopy(policy.get_decoder())
        self.head = ValueHead(policy.config.hidden_size)

    def forward(self, input_ids, attention_mask, position_ids):
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(hidden.last_hidden_state)


