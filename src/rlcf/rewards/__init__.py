"""Rewards and judges: reward sources (a Python function or a reward model) with their checks, timeouts and scaling
(`sources`), and the judges that compare two responses for a win-rate or a label (`judges`)."""

from .judges import Judge, JudgeError, LLMJudge, ScoreJudge, make_judge
from .sources import HFRewardModel, RewardError, RewardScaler, RewardSource, check_scores, load_callable, reward_texts

__all__ = ["HFRewardModel", "Judge", "JudgeError", "LLMJudge", "RewardError", "RewardScaler", "RewardSource",
           "ScoreJudge", "check_scores", "load_callable", "make_judge", "reward_texts"]
