"""Text classifiers (content moderation, prompt-injection detection): data, byte- and
word-level models, evasion attacks (character obfuscation, word substitution, HotFlip,
embedding-space PGD), adversarial-training recipes (A2T-style augmentation, embedding PGD,
FreeLB) and their evaluation. See docs/text.md.

    from toughen.text import load_text_data, build_text_model, char_obfuscate
"""

from toughen.text.attacks import (  # noqa: F401
    TEXT_ATTACKS, TextAttackResult, char_obfuscate, embed_pgd, embedding_pgd, get_text_attack, hotflip,
    list_text_attacks, word_substitute,
)
from toughen.text.data import TEXT_DATASETS, TextSplits, is_text_data, list_text_datasets, load_text_data  # noqa: F401
from toughen.text.evaluation import evaluate_text_attack  # noqa: F401
from toughen.text.models import TEXT_MODELS, build_text_model, list_text_models, predict  # noqa: F401
from toughen.text.recipes import TEXT_RECIPES, TextRecipeContext, list_text_recipes  # noqa: F401
from toughen.text.train import TextTrainConfig, fit_text, is_text_run, load_text_run, train_text  # noqa: F401
