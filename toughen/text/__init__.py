"""Text classifiers (content moderation, prompt-injection detection): data, byte- and
word-level models, evasion attacks (character obfuscation, word substitution, HotFlip,
embedding-space PGD), adversarial-training recipes (A2T-style augmentation, embedding PGD,
FreeLB) and their evaluation. See docs/text.md.

    from toughen.text import load_text_data, build_text_model, char_obfuscate
"""

from toughen.run_kinds import RUN_KINDS, RunKind
from toughen.text.attacks import (  # noqa: F401
    DISCRETE, TEXT_ATTACKS, TextAttackResult, char_obfuscate, embed_pgd, embedding_pgd, get_text_attack, hotflip,
    list_text_attacks, word_substitute,
)
from toughen.text.data import TEXT_DATASETS, TextSplits, is_text_data, list_text_datasets, load_text_data  # noqa: F401
from toughen.text.evaluation import evaluate_text_attack  # noqa: F401
from toughen.text.models import TEXT_MODELS, build_text_model, list_text_models, predict  # noqa: F401
from toughen.text.recipes import TEXT_RECIPES, TextRecipeContext, list_text_recipes  # noqa: F401
from toughen.text.audit import audit_text_run
from toughen.text.train import (  # noqa: F401
    TextTrainConfig, evaluated_threat, fit_text, is_text_run, load_text_run, train_text,
)

# Text runs plug into the core's audit and report through the run-kind registry (the core never
# imports toughen.text).
RUN_KINDS.register("text")(RunKind(audit=audit_text_run, threat_size=evaluated_threat,
                                   discrete_attacks=frozenset(DISCRETE)))
