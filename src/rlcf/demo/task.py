"""Built-in demo task: "write positive, upbeat, short text".

The prompts (``prompts.txt``) are short everyday writing requests, many of them about mildly
unpleasant topics (delayed trains, burnt toast, Monday mornings), so a small chat model starts
out writing a mix of neutral, negative and positive text and has room to improve.

The reward is programmatic, deterministic and cheap (pure Python, no model):

    reward = positivity(response) + brevity(response)

* ``positivity`` is a hand-written lexicon score in (-1, 1): +1 for each distinct positive word,
  -1 for each distinct negative word, a word preceded (within 3 words, same clause) by a negator
  such as "not", "never", "no", "without" or a "-n't" contraction counts -0.75 times its polarity,
  and the sum ``s`` is squashed to ``s / sqrt(s**2 + 6)``.
* ``brevity`` is 0 for 1 to 30 words, falls linearly to -0.5 at 60 words and stays there, and is
  -1 for a response with no words at all.

Only the standard library is imported here.
"""

from __future__ import annotations

import math
import re
from importlib import resources

__all__ = [
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "brevity",
    "load_prompts",
    "positivity",
    "reward",
    "word_count",
]

# Hand-written for this task. Words whose polarity depends heavily on context ("like", "pretty",
# "hard", "cold", "dark", "mean", "light") are left out on purpose.
POSITIVE_WORDS: frozenset[str] = frozenset(
    """
    admire admired adore adored adventure adventurous amazed amazing appreciate appreciated
    appreciation awesome beautiful beautifully beauty beloved best better blessed blessing
    bliss blissful bloom blooming blossom brave bright brighten brighter brilliant bustling
    calm calming care caring celebrate celebrated celebration charm charming cheer cheerful
    cheerfully cheering cheers cheery cherish cherished comfort comfortable comforting
    compassion confident content cosy cozy creative cuddle dazzling delicious delight
    delighted delightful dignity eager ease easy elegant encourage encouraged encouraging
    energetic enjoy enjoyable enjoyed enjoying enthusiastic excellent excited excitement
    exciting fabulous fantastic favorite favourite festive flourish fond fortunate fresh
    friendly friendship fun generous gentle genuine gift glad gladly glorious glow glowing
    good gorgeous grace graceful grateful gratitude great greatest happily happiness happy
    harmony healthy heartfelt heartwarming helpful honest honor honour hope hopeful
    hopefully hug improve improved incredible inspiration inspire inspired inspiring joy
    joyful joyous kind kindhearted kindly kindness laugh laughed laughing laughter
    lighthearted lively love loved lovely loving lucky luscious magical magnificent
    marvellous marvelous merry neat nice optimistic outstanding paradise passionate peace
    peaceful perfect playful pleasant pleased pleasure polite positive precious proud
    proudly radiant refreshed refreshing relax relaxed relaxing reliable relieved remarkable
    respect rewarding safe satisfied satisfying serene shine shining smile smiles smiling
    smooth soothing sparkle sparkling splendid stunning success successful sunny sunshine
    super superb support supportive sweet sweetest terrific thank thankful thanks thoughtful
    thrilled thrive thriving tranquil treasure treasured triumph trust uplifting vibrant
    warm warmth welcome welcoming wholesome win wishes wonderful wonderfully wow yay yummy
    """.split()
)

NEGATIVE_WORDS: frozenset[str] = frozenset(
    """
    ache aching afraid anger angry anguish annoyance annoyed annoying anxiety anxious
    ashamed awful awkward bad badly battered bitter bitterly bleak bored boredom boring
    broke broken chaos chaotic complain complaint corruption cranky crash crashed crisis
    cruel cry crying curse cursed damage damaged danger dangerous darkness dead death
    depressed depressing desolate desolation despair difficult dirty disappoint disappointed
    disappointing disappointment disaster disgusting dislike dismal dread dreadful dreary
    dull eerie embarrassed embarrassing emergency exhausted exhausting fail failed failing
    failure fault fear feared fearful fears filthy freezing frustrated frustrating
    frustration furious gloom gloomy grief grim gross grumbling grumpy guilty harm harmful
    hassle hate hated hateful hatred heartbroken helpless hopeless hopelessly horrible
    horror hostile hurt hurtful hurts ill injured insult irritated irritating isolated
    isolating jealous kill killed loneliness lonely lose loses losing loss lost lousy mess
    messy miserable misery missing mistake mistakes moody nasty negative nervous nightmare
    noisy overwhelmed overwhelming pain painful panic pathetic pessimistic pointless poor
    problem problems rage regret rotten rude ruin ruined sad sadder saddest sadly sadness
    scared scary selfish shabby shame shameful sick sickness soggy sorrow sorrowful sorry
    sour stormy stress stressed stressful struggle struggling stuck stupid suffer suffering
    tears tedious tense terrible threat tired toxic tragedy tragic trouble ugly unfair
    unforgiving unfortunate unfortunately unhappy uninviting unlucky unpleasant unsettling
    upset upsetting useless violence violent war weak weary woe worried worries worry
    worrying worse worst worthless wretched wrong
    """.split()
)

NEGATORS: frozenset[str] = frozenset(
    "not no never none nobody nothing neither nor without hardly barely cannot cant dont doesnt "
    "didnt isnt wasnt arent werent wont wouldnt couldnt shouldnt aint".split()
)

NEGATION_WINDOW = 3  # a polarity word is negated by a negator among the 3 words before it
NEGATION_FACTOR = -0.75  # "not good" counts -0.75, "not bad" counts +0.75
SQUASH_ALPHA = 6.0  # positivity = s / sqrt(s^2 + SQUASH_ALPHA)
FREE_WORDS = 30  # responses up to this many words get no length penalty
MAX_PENALTY_WORDS = 60  # the length penalty reaches its floor here
LENGTH_PENALTY = 0.5  # floor of the length penalty (as a positive number)
EMPTY_PENALTY = 1.0  # penalty for a response with no words

# Words (letters with inner apostrophes) and clause-breaking punctuation, each a token.
_TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)*|[.,;:!?()\"]")
_CLAUSE_BREAKS = frozenset(".,;:!?()\"")


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _TOKEN_RE.findall(text)


def _is_negator(token: str) -> bool:
    return token.endswith("n't") or token.replace("'", "") in NEGATORS


def word_count(text: str) -> int:
    """Number of words (runs of letters, inner apostrophes allowed) in ``text``."""
    return sum(1 for t in _tokens(text) if t not in _CLAUSE_BREAKS)


def positivity(text: str) -> float:
    """Lexicon positivity of ``text``, a float in the open interval (-1, 1); 0.0 means neutral.

    The text is lower-cased and split into words. Each word in ``POSITIVE_WORDS`` has polarity
    +1, each word in ``NEGATIVE_WORDS`` -1, every other word 0. A polarity word with a negator
    ("not", "no", "never", "without", "hardly", any "-n't" contraction, ...) among the 3 words
    before it, with no punctuation in between, has its polarity multiplied by -0.75 ("not bad"
    is +0.75, "not happy" is -0.75). Each distinct (word, negated) pair counts once, so repeating
    "great great great" earns no more than one "great". The sum ``s`` is mapped to
    ``s / sqrt(s**2 + 6)``: one positive word gives 0.38, two 0.63, three 0.77, five 0.90.
    """
    seen: dict[tuple[str, bool], float] = {}
    last_negator = -(10**9)  # index of the most recent negator in the current clause
    words_in_clause = 0
    for tok in _tokens(text):
        if tok in _CLAUSE_BREAKS:
            last_negator = -(10**9)
            continue
        words_in_clause += 1
        if _is_negator(tok):
            last_negator = words_in_clause
            continue
        word = tok.replace("'", "")
        if word in POSITIVE_WORDS:
            polarity = 1.0
        elif word in NEGATIVE_WORDS:
            polarity = -1.0
        else:
            continue
        negated = words_in_clause - last_negator <= NEGATION_WINDOW
        seen[(word, negated)] = polarity * (NEGATION_FACTOR if negated else 1.0)
    s = sum(seen.values())
    return s / math.sqrt(s * s + SQUASH_ALPHA)


def brevity(text: str) -> float:
    """Length term of the reward, in [-1, 0].

    0.0 for 1 to 30 words; from 30 to 60 words it falls linearly to -0.5 and stays at -0.5
    beyond; -1.0 when the response has no words at all (empty, whitespace or punctuation only).
    """
    n = word_count(text)
    if n == 0:
        return -EMPTY_PENALTY
    over = min(max(n - FREE_WORDS, 0), MAX_PENALTY_WORDS - FREE_WORDS)
    return -LENGTH_PENALTY * over / (MAX_PENALTY_WORDS - FREE_WORDS) if over else 0.0


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Demo reward: ``positivity(response) + brevity(response)`` for each response, in (-2, 1).

    ``prompts`` is accepted for the common rlcf reward signature and only checked for length;
    the score depends on the response text alone.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return [float(positivity(r) + brevity(r)) for r in responses]


TEST_EVERY = 5  # every 5th prompt is held out for evaluation (65 of 324)


def load_prompts(split: str = "train") -> list[str]:
    """The demo prompts from ``rlcf/demo/prompts.txt``: one per line, stripped, blanks dropped.

    split: 'train' (training and labelling), 'test' (every 5th prompt, held out for evaluation) or 'all'.
    """
    text = resources.files("rlcf.demo").joinpath("prompts.txt").read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if split == "all":
        return prompts
    if split not in ("train", "test"):
        raise ValueError(f"demo prompts: split {split!r}; choose train, test or all")
    return [p for i, p in enumerate(prompts) if (i % TEST_EVERY == TEST_EVERY - 1) == (split == "test")]
