"""toughen's text attacks beside TextAttack's character-level recipes, on one model, in one run.

    taskset -c 1 python benchmarks/bench_textattack.py --threads 1 [--run RUN_DIR] [--n 200] [--budget 3]

One char_cnn (by default a `standard` run trained here for 3 epochs on prompt_injection, into a
temporary directory; `--run` takes an existing text run instead), the first `--n` test texts it
classifies correctly, the same edit budget for every contender:

- TextAttack's DeepWordBug (Gao et al. 2018), assembled from the components of
  `textattack.attack_recipes.DeepWordBugGao2018` (its four character transformations,
  RepeatModification, StopwordModification, LevenshteinEditDistance, UntargetedClassification,
  GreedyWordSwapWIR); the script checks that the recipe's own `build` uses the same components;
- TextAttack's Pruthi2019 (`Pruthi2019.build(wrapper, max_num_word_swaps=budget)`), the other
  character-level recipe that needs no download;
- toughen's `char_obfuscate` (every candidate edit tried), the same restricted to ASCII edits like
  DeepWordBug's (leet substitution, adjacent swap, deletion, duplication), and `hotflip`
  (white-box). All from `toughen.text.attacks.TEXT_ATTACKS`.

TextAttack sees the model through a `textattack.models.wrappers.ModelWrapper` that returns the
logits of `toughen.text.models.predict` for a list of strings. The texts are split into chunks
(`--chunk`, default 20) and the contenders take turns on each chunk, a different one first each
round (`common.round_robin`), so a drift in the machine's speed is shared. Seconds are the sum
over chunks, attacks only: importing TextAttack, building its attacks and one warm-up call per
contender (on validation texts) are not timed. Every contender's output is judged the same way
afterwards: success is whether the model misclassifies the returned text, classified on its own
(re-checked, not taken from the tool: see `alone`), edits are the Damerau-Levenshtein distance (optimal string alignment, on code
points: `osa_distance` here) between the original and the returned text, queries are the tool's
own count per text (texts classified, original included; for hotflip, forward-backward passes).

How the budgets correspond. toughen's budget B counts character edits (Damerau-Levenshtein: a
substitution, insertion, deletion or adjacent swap is one edit). TextAttack counts a word swap
as one modification, and each of DeepWordBug's word swaps makes one character edit in one word.
The recipe's own limit is `LevenshteinEditDistance(30)` between the original and the perturbed
text; here it is `LevenshteinEditDistance(B)`, so DeepWordBug makes at most B character edits
(Levenshtein >= Damerau-Levenshtein, so its texts are also within B by toughen's measure). For
Pruthi2019, `max_num_word_swaps=B` with RepeatModification (a word changes once, by one character
edit) gives the same bound. The measured maximum edits per contender are in the table.

Where the comparison is not like for like (say so with the numbers):
- Candidates: DeepWordBug tries 4 edits of a word (one random position and letter per
  transformation), toughen's char_obfuscate tries every edit of 7 kinds, Unicode homoglyphs and
  zero-width characters included, so it asks more queries and has a larger threat model; the
  ASCII variant is the closer match to DeepWordBug's edit set.
- Levenshtein vs Damerau: under DeepWordBug's Levenshtein limit an adjacent swap costs 2 of the
  budget, under toughen's 1.
- Stopwords: both TextAttack recipes never edit a stopword (NLTK's English list); toughen edits
  any word.
- Search: DeepWordBug ranks words by replacing each with "[UNK]" and visits each word once,
  keeping an edit only if it raises the score; toughen ranks by deleting the word and may return
  to a word. Pruthi2019 searches greedily over every word each step (many more queries).
- Batching: TextAttack attacks one text at a time (model batches of up to 32); toughen attacks a
  whole chunk at once. That is the design being compared, and the chunk size affects toughen's
  time. hotflip is white-box (it reads gradients); the others see only logits.
- TextAttack caches repeated texts, so its query counts leave out repeats.

Running TextAttack 0.3.11 offline (`make bench-text` installs it; it is never a dependency of
toughen). `pip install --no-deps textattack==0.3.11`, then the packages `import textattack`
needs (its __init__ imports every recipe and every transformation, the Chinese and
grammar-checking ones included): requests, editdistance, Levenshtein, lru-dict, terminaltables,
more-itertools, word2number, num2words, lemminflect, nltk, datasets, langdetect, jieba, pinyin,
OpenHowNet, language_tool_python and bert-score (none of them downloads anything at import).
Three things are arranged here, before the import, and only in this process:
- `flair` is replaced in `sys.modules` by a stub: TextAttack imports it at package import time
  (a tokenizer subclass, part-of-speech and NER tagging), but flair 0.15 pins transformers < 5
  and about twenty other packages, and the character-level recipes never tag words; the stub
  raises if anything does try to use it.
- TextAttack's first import downloads NLTK data (`_post_install`) unless its cache directory
  holds the marker `post_install_check_3`: `TA_CACHE_DIR` points at a temporary directory that
  holds it.
- StopwordModification reads NLTK's English stopwords, which are not downloaded here: a temporary
  NLTK data directory holds `STOPWORDS` below (NLTK's English list, written out), and the hand-made
  DeepWordBug passes the same set explicitly.
Hugging Face's offline switches are set too; nothing is downloaded at run time.

Writes benchmarks/results/textattack.json and the "TextAttack" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402

# NLTK's English stopword list (its classic 179 words), the one StopwordModification uses by
# default, written out because NLTK data are not downloaded here.
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this that
that'll these those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very s t can will just don don't should should've now d ll m o re
ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn
wouldn't
""".split())

DEEPWORDBUG = "TextAttack DeepWordBug"
PRUTHI = "TextAttack Pruthi2019"
OBFUSCATE = "toughen char_obfuscate"
OBFUSCATE_ASCII = "toughen char_obfuscate, ASCII edits"
HOTFLIP = "toughen hotflip"
ASCII_OPS = ("leet", "swap", "delete", "duplicate")  # substitution, swap, deletion, insertion: DeepWordBug's four
KIND = {DEEPWORDBUG: "black-box", PRUTHI: "black-box", OBFUSCATE: "black-box", OBFUSCATE_ASCII: "black-box",
        HOTFLIP: "white-box"}
SHORT = {OBFUSCATE: "`char_obfuscate`", OBFUSCATE_ASCII: "`char_obfuscate` (ASCII edits)", HOTFLIP: "`hotflip`"}


# ---------------------------------------------------------------- the edit count, the budgets


def osa_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment) on code points: substitutions,
    insertions, deletions and swaps of two adjacent characters each count 1. The common prefix
    and suffix are stripped first (exact for this distance), so a long text with a few edits
    costs little."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if not a or not b:
        return len(a) + len(b)
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def textattack_limits(budget: int) -> dict[str, int]:
    """TextAttack's settings for toughen's budget of ``budget`` character edits: DeepWordBug's
    LevenshteinEditDistance limit (its word swaps each make one character edit, and Levenshtein
    >= Damerau-Levenshtein, so at most ``budget`` edits by toughen's measure; an adjacent swap
    costs 2 under it) and Pruthi2019's max_num_word_swaps (one character edit per word, each word
    once)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"the budget is a whole number of character edits >= 0, got {budget!r}")
    return {"deepwordbug_max_edit_distance": budget, "pruthi_max_num_word_swaps": budget}


# ---------------------------------------------------------------- TextAttack, offline


def import_textattack(workdir: Path):
    """Import TextAttack with nothing downloaded (see the module docstring for why each step)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    # TextAttack's first import runs nltk.download(...) unless this marker is in its cache dir
    cache = workdir / "textattack_cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "post_install_check_3").touch()
    os.environ["TA_CACHE_DIR"] = str(cache)
    # NLTK's English stopwords, for the StopwordModification() that textattack.augmentation builds
    # at import time and the one in Pruthi2019.build()
    nltk_data = workdir / "nltk_data"
    (nltk_data / "corpora" / "stopwords").mkdir(parents=True, exist_ok=True)
    (nltk_data / "corpora" / "stopwords" / "english").write_text("\n".join(sorted(STOPWORDS)) + "\n")
    os.environ["NLTK_DATA"] = str(nltk_data)
    import nltk

    if str(nltk_data) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data))
    if "flair" not in sys.modules:
        _stub_flair()
    import textattack

    # its goal functions warn that they do not know a toughen model's class; nothing else is lost
    textattack.shared.utils.logger.setLevel(logging.ERROR)
    return textattack


def _stub_flair() -> None:
    """flair, which textattack imports at package import time (textattack.shared.utils.strings
    subclasses flair.data.Tokenizer; attacked_text and the PartOfSpeech constraint import
    Sentence and SequenceTagger), is not installed: flair 0.15 requires transformers < 5 and
    some twenty other packages. DeepWordBug and Pruthi2019 never tag words; anything that does
    fails loudly here instead of running with a fake tagger."""

    def unavailable(*args, **kwargs):
        raise RuntimeError("flair is stubbed in bench_textattack.py: part-of-speech/NER tagging is unavailable")

    class Tokenizer:  # the base class of TextAttackFlairTokenizer
        pass

    flair = types.ModuleType("flair")
    flair.__path__ = []  # a package, so `from flair.data import ...` resolves
    flair.device = torch.device("cpu")
    data = types.ModuleType("flair.data")
    data.Tokenizer, data.Sentence = Tokenizer, unavailable
    models = types.ModuleType("flair.models")
    models.SequenceTagger = types.SimpleNamespace(load=unavailable)
    flair.data, flair.models = data, models
    sys.modules.update({"flair": flair, "flair.data": data, "flair.models": models})


def build_textattack(ta, model, budget: int, batch_size: int):
    """The ModelWrapper around ``model`` and the attacks {name: textattack.Attack}."""
    from textattack.attack_recipes import DeepWordBugGao2018, Pruthi2019
    from textattack.constraints.overlap import LevenshteinEditDistance
    from textattack.constraints.pre_transformation import RepeatModification, StopwordModification
    from textattack.goal_functions import UntargetedClassification
    from textattack.models.wrappers import ModelWrapper
    from textattack.search_methods import GreedyWordSwapWIR
    from textattack.transformations import (
        CompositeTransformation, WordSwapNeighboringCharacterSwap, WordSwapRandomCharacterDeletion,
        WordSwapRandomCharacterInsertion, WordSwapRandomCharacterSubstitution,
    )

    from toughen.text.models import predict

    class ToughenWrapper(ModelWrapper):
        """Logits [N, C] of a toughen text model for a list of strings."""

        def __init__(self, model):
            self.model = model

        def __call__(self, text_input_list):
            return predict(self.model, list(text_input_list), batch_size)

    wrapper = ToughenWrapper(model)
    limits = textattack_limits(budget)
    transformation = CompositeTransformation([
        WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
        WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion(),
    ])
    constraints = [RepeatModification(), StopwordModification(stopwords=STOPWORDS),
                   LevenshteinEditDistance(limits["deepwordbug_max_edit_distance"])]
    deepwordbug = ta.Attack(UntargetedClassification(wrapper), constraints, transformation, GreedyWordSwapWIR())
    # the recipe as shipped differs only in its Levenshtein limit (30): same classes, same order
    recipe = DeepWordBugGao2018.build(wrapper)
    describe = lambda a: ([type(t).__name__ for t in a.transformation.transformations],  # noqa: E731
                          sorted(type(c).__name__ for c in a.pre_transformation_constraints + a.constraints),
                          type(a.goal_function).__name__, type(a.search_method).__name__)
    if describe(recipe) != describe(deepwordbug):
        raise RuntimeError(f"DeepWordBugGao2018.build() changed: {describe(recipe)} != {describe(deepwordbug)}")
    pruthi = Pruthi2019.build(wrapper, max_num_word_swaps=limits["pruthi_max_num_word_swaps"])
    return {DEEPWORDBUG: deepwordbug, PRUTHI: pruthi}


def run_textattack(attack, texts: list[str], y: list[int], seed: int) -> dict:
    """One TextAttack attack on each text in turn (Attack.attack: no Attacker, logging or CSV)."""
    from textattack.attack_results import SuccessfulAttackResult

    random.seed(seed)  # the transformations draw positions and letters from random and numpy
    np.random.seed(seed)
    adv, queries, claimed = [], [], []
    for text, label in zip(texts, y):
        result = attack.attack(text, int(label))
        adv.append(result.perturbed_result.attacked_text.text)
        queries.append(int(result.num_queries))
        claimed.append(isinstance(result, SuccessfulAttackResult))
    return {"adv": adv, "queries": queries, "claimed": claimed}


def run_toughen(name: str, model, texts: list[str], y: list[int], budget: int, **options) -> dict:
    from toughen.text.attacks import TEXT_ATTACKS

    res = TEXT_ATTACKS.get(name)(model, texts, torch.tensor(y), budget=budget, **options)
    return {"adv": list(res.adv_texts), "queries": res.queries.tolist(), "claimed": res.success.tolist()}


# ---------------------------------------------------------------- judging, and where it ran


def alone(model, text: str) -> int:
    """The class the model gives ``text`` classified on its own. char_cnn's logits depend a little
    on the padded length of the batch a text is classified in (outputs at padding positions enter
    its max over positions), so a text near the decision boundary can change class with its batch:
    each returned text is judged alone, the same way for every contender."""
    from toughen.text.models import predict

    return int(predict(model, [text]).argmax(1).item())


def affinity() -> str | None:
    """The cores this process may run on (e.g. "1" under `taskset -c 1`), when that is known."""
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a toughen text run directory (default: train one into /tmp)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the run trained when --run is not given")
    parser.add_argument("--n", type=int, default=200, help="the first N test texts the model classifies correctly")
    parser.add_argument("--budget", type=int, default=3, help="character edits per text")
    parser.add_argument("--chunk", type=int, default=20, help="texts per round; each contender attacks each chunk")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256, help="texts per model call inside the wrapper")
    parser.add_argument("--no-pruthi", action="store_true", help="leave out Pruthi2019")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--key", default="textattack", help="the results/docs section name")
    args = parser.parse_args()
    textattack_limits(args.budget)
    torch.set_num_threads(args.threads)
    info = common.machine_info()

    from toughen.text.train import TextTrainConfig, load_text_run, load_text_run_data, train_text

    workdir = Path(tempfile.mkdtemp(prefix="bench_textattack_"))
    run = Path(args.run) if args.run else workdir / "run"
    train_seconds = None
    if not args.run:
        print(f"training char_cnn (standard, {args.epochs} epochs) into {run}", file=sys.stderr, flush=True)
        summary = train_text(TextTrainConfig(recipe="standard", epochs=args.epochs, budget=args.budget,
                                             seed=args.seed), run, progress=False)
        train_seconds = summary["train_seconds"]
    model = load_text_run(run).eval()
    splits = load_text_run_data(run)
    clean = torch.tensor([alone(model, t) == y for t, y in zip(splits.x_test, splits.y_test.tolist())])  # as judged
    picked = clean.nonzero().flatten()[: args.n].tolist()
    texts = [splits.x_test[i] for i in picked]
    labels = splits.y_test[picked].tolist()
    n = len(texts)

    t0 = time.perf_counter()
    ta = import_textattack(workdir)
    import_seconds = time.perf_counter() - t0
    from importlib.metadata import version

    info["textattack"] = version("textattack")
    attacks = build_textattack(ta, model, args.budget, args.batch_size)
    if args.no_pruthi:
        attacks.pop(PRUTHI)

    chunks = [(texts[i : i + args.chunk], labels[i : i + args.chunk]) for i in range(0, n, args.chunk)]
    toughen_runs = {
        OBFUSCATE: lambda t, y: run_toughen("char_obfuscate", model, t, y, args.budget),
        OBFUSCATE_ASCII: lambda t, y: run_toughen("char_obfuscate", model, t, y, args.budget, ops=ASCII_OPS),
        HOTFLIP: lambda t, y: run_toughen("hotflip", model, t, y, args.budget),
    }
    calls = {name: (lambda t, y, rep, a=a: run_textattack(a, t, y, args.seed + rep + 1)) for name, a in attacks.items()}
    calls.update({name: (lambda t, y, rep, f=f: f(t, y)) for name, f in toughen_runs.items()})
    warm_texts = splits.x_val[:4]
    warm_y = splits.y_val[:4].tolist()
    warmup = {name: (lambda f=f: f(warm_texts, warm_y, -1)) for name, f in calls.items()}

    def contender(name):
        def go(rep):
            print(f"round {rep + 1}/{len(chunks)}: {name}", file=sys.stderr, flush=True)
            return calls[name](*chunks[rep], rep)
        return go

    timed = common.round_robin({name: contender(name) for name in calls}, reps=len(chunks), warmup=warmup)

    rows = {}
    for name, t in timed.items():
        adv = [a for out in t.results for a in out["adv"]]
        queries = [q for out in t.results for q in out["queries"]]
        claimed = [c for out in t.results for c in out["claimed"]]
        fooled = [alone(model, a) != y for a, y in zip(adv, labels)]  # judged the same way for all
        edits = [osa_distance(o, a) for o, a in zip(texts, adv)]
        won = [e for e, f in zip(edits, fooled) if f]
        rows[name] = {
            "kind": KIND[name], "success_rate": sum(fooled) / n, "successes": sum(fooled),
            "claimed_successes": sum(claimed), "disagreements": sum(c != f for c, f in zip(claimed, fooled)),
            "mean_edits_successful": float(np.mean(won)) if won else None, "max_edits": max(edits),
            "over_budget": sum(e > args.budget for e in edits), "mean_queries": float(np.mean(queries)),
            "seconds": sum(t.seconds), "cpu_seconds": sum(t.cpu_seconds), "chunk_seconds": t.seconds,
            "examples": [{"original": o, "adversarial": a, "label": y, "edits": e}
                         for o, a, y, e, f in zip(texts, adv, labels, edits, fooled) if f][:5],
        }
    info["load_average_1min_end"] = common.load_average()
    result = {
        "machine": info,
        "setup": {"run": str(run) if args.run else f"char_cnn, standard, {args.epochs} epochs (trained here)",
                  "train_seconds": train_seconds, "data": splits.name, "n": n, "n_test": len(splits.x_test),
                  "clean_accuracy": clean.float().mean().item(),
                  "class_counts": {splits.class_names[c]: labels.count(c) for c in sorted(set(labels))},
                  "budget": args.budget, "textattack_limits": textattack_limits(args.budget), "chunk": args.chunk,
                  "rounds": len(chunks), "threads": args.threads, "seed": args.seed, "batch_size": args.batch_size,
                  "textattack_import_seconds": import_seconds, "ascii_ops": list(ASCII_OPS),
                  "cpu_affinity": affinity()},
        "contenders": rows,
    }
    common.publish(args.key, result, render(result), doc=not args.no_doc)


def goal(rows: dict, name: str) -> tuple[bool, str]:
    """toughen's attack at least as successful as DeepWordBug in at most a third of its time."""
    ours, ref = rows[name], rows[DEEPWORDBUG]
    ratio = ours["seconds"] / ref["seconds"] if ref["seconds"] > 0 else float("inf")
    met = ours["success_rate"] >= ref["success_rate"] and ratio <= 1 / 3
    return met, (f"{SHORT[name]}: {common.fmt_pct(ours['success_rate'])} vs {common.fmt_pct(ref['success_rate'])} "
                 f"in {ratio:.2f}x the time: **{'met' if met else 'missed'}**")


def render(result: dict) -> str:
    s, rows = result["setup"], result["contenders"]
    ref = rows[DEEPWORDBUG]
    table = []
    for name, r in rows.items():
        mean_edits = "-" if r["mean_edits_successful"] is None else f"{r['mean_edits_successful']:.2f}"
        queries = f"{r['mean_queries']:.1f}" + (" (fwd+bwd)" if name == HOTFLIP else "")
        table.append([name, r["kind"], f"{common.fmt_pct(r['success_rate'])} ({r['successes']}/{s['n']})", mean_edits,
                      r["max_edits"], queries, f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
                      common.fmt_ratio(r["seconds"], ref["seconds"])])
    goals = [goal(rows, name) for name in (OBFUSCATE, OBFUSCATE_ASCII, HOTFLIP) if name in rows]
    disagreements = sum(r["disagreements"] for r in rows.values())
    classes = ", ".join(f"{v} {k}" for k, v in s["class_counts"].items())
    return "\n".join([
        "## TextAttack (`benchmarks/bench_textattack.py`)", "",
        common.machine_line(result["machine"]).replace(
            "\nCommand:", f" TextAttack {result['machine'].get('textattack')}.\nCommand:"
        ) + (f" (pinned to CPU core {s['cpu_affinity']})" if s.get("cpu_affinity") else ""), "",
        f"{s['run']} on {s['data']} ({common.fmt_pct(s['clean_accuracy'])} of the {s['n_test']} test texts right); "
        f"the first {s['n']} test texts it classifies correctly ({classes}), at most {s['budget']} character edits "
        f"per text, in {s['rounds']} rounds of {s['chunk']} texts, every contender on each round in turn. "
        f"DeepWordBug is the recipe's components with `LevenshteinEditDistance({s['textattack_limits']['deepwordbug_max_edit_distance']})` "
        f"(the recipe's limit is 30), Pruthi2019 the recipe with `max_num_word_swaps={s['textattack_limits']['pruthi_max_num_word_swaps']}`; "
        f"the ASCII variant of char_obfuscate uses only {', '.join(s['ascii_ops'])} (DeepWordBug's four kinds of edit). "
        "Success: the share of the texts whose returned text the model misclassifies, each classified on its "
        "own, the same re-check for every contender; edits: Damerau-Levenshtein on code points between the original and the returned text "
        "(the mean over successes, the maximum over all); queries: each tool's own count per text; seconds: the "
        "attacks only, summed over rounds (CPU: this process's CPU time)." +
        (f" On {disagreements} texts a tool's own verdict differs from the re-check (char_cnn's logits move a "
         "little with the padded length of the batch a text is classified in)." if disagreements else ""),
        "",
        common.md_table(["contender", "kind", "success", "mean edits", "max edits", "mean queries", "seconds",
                         "CPU s", "time / DeepWordBug"], table, right={2, 3, 4, 5, 6, 7, 8}),
        "",
        "Goal, toughen's attack at least as successful as DeepWordBug in at most a third of its time: "
        + "; ".join(text for _, text in goals) + ".",
        "",
        "Not like for like: DeepWordBug tries 4 random edits per word and never edits a stopword, and under its "
        "Levenshtein limit an adjacent swap costs 2 edits (1 for toughen); char_obfuscate tries every edit of its 7 "
        "kinds (Unicode homoglyphs and zero-width characters included), so it asks more queries for more success; "
        "hotflip reads gradients. TextAttack attacks one text at a time, toughen a whole round at once. "
        "The script's docstring says how the budgets correspond and how TextAttack runs offline "
        "(flair stubbed, NLTK's stopwords written out, no download).",
    ])


if __name__ == "__main__":
    main()
