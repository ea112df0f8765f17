"""Tests for verifier.py. The answer grammar: its table (the same GRAMMAR the module docstring shows) row by row,
every form after every lead-in and before every tail, the replies quoted in issue 15, two options joined by each of
50 connectives, a seeded fuzz of 24,000 answers (none that names two options is paid), and every option of MedQA dev
and MMLU-Pro health in every form. Then hand-checked replies, pattern() labels and thresholds, and a fuzz of whole
replies against a simple reference parse of the format.

Run: .venv/bin/python -m pytest -q tests/test_verifier.py
"""
import itertools
import random
import re
import time
from pathlib import Path

import pytest

import verifier
from verifier import (DIRECT_WORDS, EXAMPLE_OPTIONS, GRAMMAR, OUTSIDE_WORDS, PATTERNS, VERBOSE_WORDS, Score, pattern,
                      score)

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

THINK = "Urate crystals in the joint point to gout."  # 8 words, names no letter
DRUGS = {"A": "Gentamicin", "B": "Ciprofloxacin", "C": "Ceftriaxone", "D": "Trimethoprim"}
BUGS = {"A": "S. aureus", "B": "C. difficile", "C": "E. coli", "D": "Listeria"}
VITAMINS = {"A": "Vitamin A", "B": "Vitamin D", "C": "Vitamin K", "D": "Vitamin E"}
TWINS = {"A": "Aspirin", "B": "aspirin.", "C": "Heparin", "D": "Warfarin"}
TEN = "ABCDEFGHIJ"
DOSES = dict(zip(TEN, ["5 mg", "10 mg", "15 mg", "20 mg", "25 mg", "30 mg", "35 mg", "40 mg", "45 mg", "50 mg"]))
SIGNED = {"A": "20", "B": "-20", "C": "80", "D": "-80"}
QUOTED = {"A": "\u201cI cannot tell you.\u201d", "B": "\u201cAsk her yourself.\u201d", "C": "Call the police", "D": "Nothing"}
HYPOTHESES = {"A": "Accept it", "B": "Reject it if the alternative hypothesis is true.", "C": "Neither", "D": "Both"}
TERMS = {"A": "C difficile infection", "B": "Type A personality", "C": "Hepatitis B", "D": "B-cell lymphoma",
         "E": "E. coli sepsis"}
MORE_TERMS = {"A": "Group B streptococcus", "B": "B pertussis", "C": "Vitamin B12 deficiency",
              "D": "A patient with gout"}
FORAMINA = {"A": "Foramen ovale", "B": "Foramen ovale and rotundum", "C": "Foramen spinosum", "D": "Foramen magnum"}
PUBMEDQA = {"A": "yes", "B": "no", "C": "maybe"}  # data.PUBMEDQA_OPTIONS


def reply(ans, think=THINK):
    return f"<think>{think}</think><answer>{ans}</answer>"


def render(shape, letter, text):
    return shape.replace("{L}", letter).replace("{T}", text)


SHAPES = [shape for form in GRAMMAR for shape in form.shapes]


# ---- the grammar table: the module docstring shows it, and each row's examples pass or fail as it says

def test_docstring_shows_the_grammar():
    assert verifier.grammar_table() in verifier.__doc__
    assert len(GRAMMAR) == len({f.name for f in GRAMMAR}) >= 5 and all(f.passes and f.fails for f in GRAMMAR)


@pytest.mark.parametrize("form", GRAMMAR, ids=[f.name for f in GRAMMAR])
def test_grammar_row(form):
    needs_text = any("{T}" in shape for shape in form.shapes)
    for ans in form.passes:
        s = score(reply(ans), "C", EXAMPLE_OPTIONS)
        assert (s.reward, s.pred) == (1, "C"), (ans, s)
        s = score(reply(ans), "A", EXAMPLE_OPTIONS)
        assert (s.reward, s.pred, s.format_ok) == (0, "C", True), ans
        # with letter-only options the option's text is unknown, so the forms with {T} are refused
        assert score(reply(ans), "C", "ABCD").reward == (-1 if needs_text else 1), ans
    for ans in form.fails:
        for gold in EXAMPLE_OPTIONS:
            s = score(reply(ans), gold, EXAMPLE_OPTIONS)
            assert (s.reward, s.pred) == (-1, None), (ans, gold, s)
            assert s.reason, ans
    for shape in form.shapes:  # each shape, rendered plainly, is the option it names
        assert score(reply(render(shape, "D", "Sitagliptin")), "D", EXAMPLE_OPTIONS).reward == 1, shape


def lead_ins():
    """Every lead-in the grammar's words make, as a model would write it."""
    out = []
    for opener, comma, det, adj, head, verb, sep, word in itertools.product(
            ("",) + verifier.OPENERS, ("", ","), ("",) + verifier.DETERMINERS, ("",) + verifier.ADJECTIVES,
            verifier.HEADS, ("",) + verifier.VERBS, ("", ":", " -"), ("", " option", " choice")):
        if opener or not comma:
            words = [w for w in (opener + comma, det, adj, head, verb) if w]
            out.append(" ".join(words) + sep + word)
    return out


def tails():
    out = []
    for verb in verifier.VERBS:
        for the in ("", " the"):
            for adj in verifier.ADJECTIVES:
                out += [f" {verb}{the} {adj}"] + [f" {verb}{the} {adj} {head}" for head in verifier.HEADS]
            out += [f" {verb}{the} {head}" for head in verifier.HEADS]
    return out


def test_every_form_after_any_lead_in_and_before_any_tail():
    rng = random.Random(15)
    leads = lead_ins()
    assert len(leads) > 10_000 and "the answer is" in leads and "so, the correct answer is: option" in leads
    for lead in rng.sample(leads, 600):
        shape, gold = rng.choice(SHAPES), rng.choice("ABCD")
        lead = lead.capitalize() if rng.random() < 0.5 else lead
        ans = f"{lead} {render(shape, gold, EXAMPLE_OPTIONS[gold])}"
        s = score(reply(ans), gold, EXAMPLE_OPTIONS)
        assert (s.reward, s.pred) == (1, gold), (ans, s)
    for tail in tails():
        for shape in SHAPES:
            ans = render(shape, "C", "Metformin") + tail + rng.choice(["", "."])
            assert score(reply(ans), "C", EXAMPLE_OPTIONS).reward == 1, ans
    # one lead-in and one tail, no more, and no other words
    for ans in ("The answer is the answer is C", "I believe the answer is C", "Clearly the answer is C",
                "C is the answer is the answer", "C is probably correct", "C is the answer, not D"):
        assert score(reply(ans), "C", EXAMPLE_OPTIONS).reward == -1, ans


# ---- issue 15: every reply quoted under "Why", as a careful grader would score it

WHY_HEDGES = ["C. Metformin, D maybe", "C. Metformin, D probably", "C. Metformin, alternative D",
              "C. Metformin; next best D", "C. Metformin, with D as backup", "C. Metformin; choose D if intolerant",
              "C. Metformin, though choosing D is fine", "C. Metformin\n\nIf she cannot tolerate it, switch to D.",
              "C. Metformin, or d", "C. Metformin, or (d)", "C. Metformin, or option d", "C. Metformin, or option 4",
              "C. Metformin, \u043er D", "C. Metformin, or \uff24"]  # Cyrillic o; full-width D
WHY_TEN_HEDGES = ["J. 50 mg, H maybe", "J. 50 mg, or h"]
WHY_SINGLE = ["the answer is (c).", "(c)", "the answer is c", "Metformin (C)", "\\boxed{\\text{C}}"]


@pytest.mark.parametrize("ans", WHY_HEDGES)
def test_why_hedges_fail(ans):
    for gold in "CD":
        s = score(reply(ans), gold, EXAMPLE_OPTIONS)
        assert (s.reward, s.format_ok, s.pred) == (-1, False, None)


@pytest.mark.parametrize("ans", WHY_TEN_HEDGES)
def test_why_hedges_among_ten_fail(ans):
    for gold in "JH":
        assert score(reply(ans), gold, DOSES).reward == -1


@pytest.mark.parametrize("ans", WHY_SINGLE)
def test_why_plain_single_choices_score_by_correctness(ans):
    assert (score(reply(ans), "C", EXAMPLE_OPTIONS).reward, score(reply(ans), "D", EXAMPLE_OPTIONS).reward) == (1, 0)
    assert score(reply(ans), "D", EXAMPLE_OPTIONS).pred == "C"


@pytest.mark.parametrize("think", ["The answer is clearly C, obviously.", "It is C, not D."])
def test_why_short_thinks_are_direct_answers(think):
    assert pattern(reply("C", think=think), EXAMPLE_OPTIONS) == "direct_answer"
    assert pattern(reply("C", think=think)) == "direct_answer"


# ---- no hedge is paid: any two accepted forms of two options, joined by any connective

CONNECTIVES = [" or ", " OR ", ", or ", ", ", "; ", " / ", "/", " and ", " & ", " + ", " vs ", " versus ", " maybe ",
               ", maybe ", ", probably ", ", alternative ", ", alternatively ", "; next best ", ", with backup ",
               " as backup, then ", ", switch to ", "\n\nIf she cannot tolerate it, switch to ", "\n", "\n\n",
               " then ", ", not ", " but ", ", otherwise ", " else ", " or possibly ", " | ", " -> ", " > ", ". ",
               ": ", " - ", " \u2013 ", " ", "", " (", ", though choosing ", "; choose ", " if intolerant, ",
               ", second choice ", ", unless ", ", followed by ", " instead of ", ", or option ", " \u043er ",
               ", D is fine too; "]


def namings(letter, options):
    """Ways to name one option: its accepted forms and other ways a reader understands (lower case, look-alike and
    full-width letters, "option 4")."""
    text = options[letter]
    ways = [render(shape, letter, text) for shape in SHAPES]
    ways += [letter.lower(), f"({letter.lower()})", chr(0xFF21 + ord(letter) - 65), f"option {letter.lower()}",
             f"option {list(options).index(letter) + 1}", text.upper(), f"**{letter}**"]
    return ways + [{"A": "\u0410", "B": "\u0412", "C": "\u0421", "E": "\u0415", "H": "\u041d"}.get(letter, letter)]


@pytest.mark.parametrize("options,first,second", [(EXAMPLE_OPTIONS, "C", "D"), (EXAMPLE_OPTIONS, "D", "C"),
                                                  (DOSES, "J", "H")])
def test_two_options_joined_by_any_connective_fail(options, first, second):
    assert len(CONNECTIVES) >= 40
    n = 0
    for a in [render(shape, first, options[first]) for shape in SHAPES] + [f"The answer is {first}"]:
        for b in namings(second, options):
            for c in CONNECTIVES:
                s = score(reply(a + c + b), first, options)
                assert s.reward == -1, (a + c + b, s)
                n += 1
    assert n >= 16 * 20 * 40


# ---- no hedge is paid: a seeded fuzz of answers built from letters, texts, lead-ins and filler words

FILLERS = ["maybe", "probably", "or", "and", "not", "if", "then", "as", "backup", "alternative", "next", "best",
           "the", "a", "is", "likely", "possibly", "also", "works", "too", "switch", "to", "choose", "because",
           "it", "patient", "first-line", "second", "instead", ",", ";", ".", ":", "/", "-", "(", ")", "\n", "**",
           "I", "answer", "option", "correct", "yes", "no", "Metformin", "mg", "4", "50", "\u043er"]
JOINERS = [" ", " ", " ", ", ", "; ", "\n", "", " or ", "/"]
FUZZ_SETS = [EXAMPLE_OPTIONS, DOSES, "ABCD", PUBMEDQA, FORAMINA]


def fuzz_answer(rng, letters, texts, fillers):
    """An answer and the options it names, as the generator put them in: half are two namings joined by a
    connective, as a hedge is written, half are namings, lead-ins, fillers and tails strung together at random."""
    def naming(letter):
        return rng.choice(namings(letter, texts) if texts else [
            letter, f"({letter})", f"{letter}.", letter.lower(), f"[{letter}]", f"{letter})", f"option {letter}"])

    lead = rng.choice(["The answer is", "Answer:", "Final answer:", "So the correct answer is", "Option",
                       "The correct option is"]) if rng.random() < 0.4 else ""
    tail = rng.choice(["is the answer", "is correct", "would be the best option"]) if rng.random() < 0.2 else ""
    if rng.random() < 0.5:
        x, y = rng.choice(letters), rng.choice(letters)
        parts = [lead, naming(x) + rng.choice(CONNECTIVES) + naming(y), *rng.sample(fillers, rng.choice([0, 0, 1])),
                 tail]
        return " ".join(p for p in parts if p), {x, y}
    names, parts = [], [lead]
    for _ in range(rng.choice([1, 2, 2, 2, 3])):
        names.append(rng.choice(letters))
        parts += rng.sample(fillers, rng.choice([0, 0, 1, 2])) + [naming(names[-1])]
    parts += rng.sample(fillers, rng.choice([0, 0, 1])) + [tail]
    ans = ""
    for p in (p for p in parts if p):
        ans += (rng.choice(JOINERS) if ans else "") + p
    return ans, set(names)


def test_fuzz_no_two_option_answer_is_paid():
    rng = random.Random(2026)
    paid = two = 0
    for n in range(24_000):
        options = FUZZ_SETS[n % len(FUZZ_SETS)]
        letters = "".join(options)
        texts = options if isinstance(options, dict) else None
        # no filler may itself be an option's text ("maybe" of PubMedQA): then the generator's names are exact
        fillers = [w for w in FILLERS if not texts or w.casefold() not in {t.casefold() for t in texts.values()}]
        ans, names = fuzz_answer(rng, letters, texts, fillers)
        s = score(reply(ans), sorted(names)[0], options)
        if len(names) >= 2:
            two += 1
            assert s.reward == -1 and not s.format_ok, (ans, options, s)
        paid += s.reward == 1
    assert two > 15_000 and paid > 300, (two, paid)  # both sides of the property are exercised


# ---- real data: every option of MedQA dev and MMLU-Pro health, in every form

def load_items():
    import data  # the project's loaders; only this test needs them
    medqa = DATA / "medqa_usmle_4opt" / "phrases_no_exclude_dev.jsonl"
    mmlu_pro = DATA / "mmlu_pro_health" / "mmlu_pro_test_health.jsonl"
    if not (medqa.exists() and mmlu_pro.exists()):
        pytest.skip("real data not found (../shared/data)")
    items = data.load_mcqa(medqa) + data.load_mcqa(mmlu_pro)
    assert len(items) == 1272 + 818
    return items


def test_real_data_every_option_in_every_form():
    """The gold in every form scores 1, every other option in every form scores 0 (its own letter), and the gold's
    text after another option's letter is a format failure. The forms of two options never coincide here: no option's
    text is another offered letter, and no two options share a text after normalisation."""
    items = load_items()
    n = 0
    for i, it in enumerate(items):
        wrong = next(k for k in it.options if k != it.answer)
        for letter, text in it.options.items():
            for shape in SHAPES:
                s = score(reply(render(shape, letter, text)), it.answer, it.options)
                assert (s.reward, s.pred) == (float(letter == it.answer), letter), (it.id, shape, letter, s)
                n += 1
        gold_text = it.options[it.answer]
        assert score(reply(f"{wrong}. {gold_text}"), it.answer, it.options).reward == -1, it.id
        assert score(reply(f"{it.answer}. {gold_text}, because it fits."), it.answer, it.options).reward == -1, it.id
        if i % 10 == 0:  # and after a lead-in and before a tail
            for shape in SHAPES:
                ans = "The correct answer is " + render(shape, it.answer, gold_text) + " is the best option"
                assert score(reply(ans), it.answer, it.options).reward == 1, (it.id, ans)
    assert n > 180_000


# ---- hand-checked replies

# (response, gold, options, reward, pred, score kwargs); every expectation checked by hand
CASES = [
    # the letter alone
    (reply("C"), "C", "ABCD", 1, "C", {}),
    (reply("C."), "C", "ABCD", 1, "C", {}),
    (reply("(C)"), "C", "ABCD", 1, "C", {}),
    (reply("C)"), "C", "ABCD", 1, "C", {}),
    (reply("[C]"), "C", "ABCD", 1, "C", {}),
    (reply("C)."), "C", "ABCD", 1, "C", {}),
    (reply("( C )"), "C", "ABCD", 1, "C", {}),
    (reply("The answer is C"), "C", "ABCD", 1, "C", {}),
    (reply("The answer is (C)."), "C", "ABCD", 1, "C", {}),
    (reply("Answer: C"), "C", "ABCD", 1, "C", {}),
    (reply("**C**"), "C", "ABCD", 1, "C", {}),
    (reply("The correct answer is **C**"), "C", "ABCD", 1, "C", {}),
    (reply("Option C"), "C", "ABCD", 1, "C", {}),
    (reply(" \n C \n"), "C", "ABCD", 1, "C", {}),
    (reply("c"), "C", "ABCD", 1, "C", {}),
    (reply("(c)"), "C", "ABCD", 1, "C", {}),
    (reply("c."), "C", "ABCD", 1, "C", {}),
    (reply("c)"), "C", "ABCD", 1, "C", {}),
    (reply("The answer is **C**."), "C", "ABCD", 1, "C", {}),
    (reply("\\boxed{C}"), "C", "ABCD", 1, "C", {}),
    (reply("$\\boxed{C}$"), "C", "ABCD", 1, "C", {}),
    (reply("\\(\\boxed{C}\\)"), "C", "ABCD", 1, "C", {}),
    (reply("So the best answer is C"), "C", "ABCD", 1, "C", {}),
    (reply("Therefore, the answer is C."), "C", "ABCD", 1, "C", {}),
    (reply("My final answer: C"), "C", "ABCD", 1, "C", {}),
    (reply("the answer is c"), "C", "ABCD", 1, "C", {}),
    (reply("option c"), "C", "ABCD", 1, "C", {}),
    (reply("The most appropriate answer is C."), "C", "ABCD", 1, "C", {}),
    (reply("**Answer:** C"), "C", "ABCD", 1, "C", {}),
    (reply("The correct option is C"), "C", "ABCD", 1, "C", {}),
    (reply("Answer - C"), "C", "ABCD", 1, "C", {}),
    (reply("C is the answer"), "C", "ABCD", 1, "C", {}),
    (reply("C is correct."), "C", "ABCD", 1, "C", {}),
    (reply("'C'"), "C", "ABCD", 1, "C", {}),
    (reply("*C*"), "C", "ABCD", 1, "C", {}),
    (reply("`C`"), "C", "ABCD", 1, "C", {}),
    (reply("\u0421"), "C", "ABCD", 1, "C", {}),  # Cyrillic Es: a look-alike is read as the letter
    (reply("\uff23"), "C", "ABCD", 1, "C", {}),  # full-width
    (reply("C!"), "C", "ABCD", -1, None, {}),  # no form
    # the letter and the option's own text (dict or list options)
    (reply("C: Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C) Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("(C) Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C - Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C \u2013 Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C (Ceftriaxone)"), "C", DRUGS, 1, "C", {}),
    (reply("Ceftriaxone (C)"), "C", DRUGS, 1, "C", {}),
    (reply("The answer is C (Ceftriaxone)."), "C", DRUGS, 1, "C", {}),
    (reply("C. **Ceftriaxone**"), "C", DRUGS, 1, "C", {}),
    (reply("c. ceftriaxone"), "C", DRUGS, 1, "C", {}),  # case is folded
    (reply("(C) is the most likely answer"), "C", DRUGS, 1, "C", {}),
    # ...with letter-only options the text cannot be checked, so those forms are refused
    (reply("C. Ceftriaxone"), "C", "ABCD", -1, None, {}),
    (reply("C: Ceftriaxone"), "C", "ABCD", -1, None, {}),
    (reply("C (Ceftriaxone)"), "C", "ABCD", -1, None, {}),
    (reply("c. ceftriaxone"), "C", "ABCD", -1, None, {}),
    (reply("C: Hepatitis B"), "C", "ABCD", -1, None, {}),
    (reply("C. Gout (A classic case)"), "C", "ABCD", -1, None, {}),
    # letters inside an option's own text are no second option
    (reply("C: Hepatitis B"), "C", TERMS, 1, "C", {}),
    (reply("D. B-cell lymphoma"), "D", TERMS, 1, "D", {}),
    (reply("E. E. coli sepsis"), "E", TERMS, 1, "E", {}),
    (reply("E. coli sepsis"), "E", TERMS, 1, "E", {}),
    (reply("B. Type A personality"), "B", TERMS, 1, "B", {}),
    (reply("A. C difficile infection"), "A", TERMS, 1, "A", {}),
    (reply("C difficile infection"), "A", TERMS, 1, "A", {}),
    (reply("(A) Group B streptococcus"), "A", MORE_TERMS, 1, "A", {}),
    (reply("B. B pertussis"), "B", MORE_TERMS, 1, "B", {}),
    (reply("C. Vitamin B12 deficiency"), "C", MORE_TERMS, 1, "C", {}),
    (reply("D. A patient with gout"), "D", MORE_TERMS, 1, "D", {}),
    (reply("A patient with gout"), "D", MORE_TERMS, 1, "D", {}),  # the option's text, not the article "A"
    (reply("C. Hepatitis B. Start tenofovir."), "C", TERMS, -1, None, {}),  # more than the text
    # wrong but well-formed
    (reply("B"), "C", "ABCD", 0, "B", {}),
    (reply("The answer is B."), "C", "ABCD", 0, "B", {}),
    (reply("Ciprofloxacin"), "C", DRUGS, 0, "B", {}),
    (reply("A. Aspirin"), "B", TWINS, 0, "A", {}),  # the letter settles the twin texts
    # not a lead-in of the list
    (reply("Patient answer is C"), "C", "ABCD", -1, None, {}),
    (reply("B answer is C"), "C", "ABCD", -1, None, {}),
    (reply("AnswerC"), "C", "ABCD", -1, None, {}),
    (reply("I think the answer is C"), "C", TEN, -1, None, {}),
    # two or more options
    (reply("A or B"), "A", "ABCD", -1, None, {}),
    (reply("A, C"), "A", "ABCD", -1, None, {}),
    (reply("A and B"), "B", "ABCD", -1, None, {}),
    (reply("A/B"), "A", "ABCD", -1, None, {}),
    (reply("AB"), "A", "ABCD", -1, None, {}),
    (reply("(A) or (B)"), "A", "ABCD", -1, None, {}),
    (reply("'C' or 'D'"), "C", "ABCD", -1, None, {}),
    (reply("A or C is correct"), "C", "ABCD", -1, None, {}),
    (reply("C. or B"), "C", "ABCD", -1, None, {}),
    (reply("C: Vitamins A and D"), "C", "ABCD", -1, None, {}),
    (reply("C. The answer is B"), "C", "ABCD", -1, None, {}),
    (reply("C) D)"), "C", "ABCD", -1, None, {}),
    (reply("C. B"), "C", "ABCD", -1, None, {}),
    (reply("C.\nB."), "C", "ABCD", -1, None, {}),
    (reply("(C) B"), "C", "ABCD", -1, None, {}),
    (reply("C: either B"), "C", "ABCD", -1, None, {}),
    (reply("C. Not A but B"), "C", "ABCD", -1, None, {}),
    (reply("C. Option B"), "C", "ABCD", -1, None, {}),
    (reply("C. **B**"), "C", "ABCD", -1, None, {}),
    (reply("C. B is also correct"), "C", "ABCD", -1, None, {}),
    (reply("C. D too"), "C", "ABCD", -1, None, {}),
    (reply("C) Ceftriaxone D) Gentamicin"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone B. Vancomycin"), "C", "ABCD", -1, None, {}),
    (reply("The answer is C. D is also possible"), "C", "ABCD", -1, None, {}),
    (reply("C (Gentamicin)"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, not Gentamicin"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, or B"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone; B"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone (although B is also reasonable)"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, though D might work too"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone; alternatively B"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, consider A too"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, yet A is also reasonable"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone; otherwise A"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone (A works too)"), "C", DRUGS, -1, None, {}),
    (reply("C (D works too)"), "C", "ABCD", -1, None, {}),
    (reply("Ceftriaxone or Gentamicin"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, or A 5 mg"), "C", DRUGS, -1, None, {}),
    # no justification form: text after the choice is open text, which could name another option
    (reply("C. Ceftriaxone, because it covers N. gonorrhoeae."), "C", DRUGS, -1, None, {}),
    (reply("C: Ceftriaxone\n\nIt is a third-generation cephalosporin."), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone - it covers gonorrhea"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, because hepatitis B is not the issue"), "C", DRUGS, -1, None, {}),
    (reply("C. SCID, caused by B and T cell dysfunction"), "C", "ABCD", -1, None, {}),
    (reply("The answer is C because urate crystals are seen."), "C", "ABCD", -1, None, {}),
    (reply("C\n\nUrate crystals are seen."), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone 1 g IM"), "C", DRUGS, -1, None, {}),  # not the option's own text
    (reply("C. Ceftriaxone-resistant gonorrhea"), "C", DRUGS, -1, None, {}),
    # empty answers
    (reply(""), "A", "ABCD", -1, None, {}),
    (reply(" "), "A", "ABCD", -1, None, {}),
    (reply("\n\t"), "A", "ABCD", -1, None, {}),
    (reply("****"), "A", "ABCD", -1, None, {}),
    # letters not offered, letters that are words, 3 to 10 options
    (reply("E"), "A", "ABCD", -1, None, {}),
    (reply("D"), "A", "ABC", -1, None, {}),
    (reply("C"), "C", "ABC", 1, "C", {}),
    (reply("J"), "J", TEN, 1, "J", {}),
    (reply("I"), "I", TEN, 1, "I", {}),
    (reply("i."), "I", TEN, 1, "I", {}),
    (reply("I. 45 mg"), "I", DOSES, 1, "I", {}),
    (reply("I."), "A", "ABCD", -1, None, {}),
    (reply("A patient with gout"), "A", "ABCD", -1, None, {}),
    (reply("The answer is A patient with gout"), "A", "ABCD", -1, None, {}),
    (reply("A"), "A", "ABCD", 1, "A", {}),
    # option texts (dict options)
    (reply("Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("  ceftriaxone. "), "C", DRUGS, 1, "C", {}),
    (reply("The answer is Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("Ceftriaxone is the best option"), "C", DRUGS, 1, "C", {}),
    (reply("\u201cCeftriaxone\u201d"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ciprofloxacin"), "C", DRUGS, -1, None, {}),  # letter contradicts its text
    (reply("B. Ceftriaxone"), "C", DRUGS, -1, None, {}),
    (reply("Amoxicillin"), "C", DRUGS, -1, None, {}),
    (reply("Aspirin"), "A", TWINS, -1, None, {}),  # the text of two options
    (reply("C. difficile"), "B", BUGS, 1, "B", {}),  # option text that starts like a letter
    (reply("C"), "C", BUGS, 1, "C", {}),
    (reply("Vitamin A"), "A", VITAMINS, 1, "A", {}),
    (reply("A. Vitamin A"), "A", VITAMINS, 1, "A", {}),
    # options whose text begins another's: only the whole text is the option
    (reply("Foramen ovale"), "A", FORAMINA, 1, "A", {}),
    (reply("Foramen ovale and rotundum"), "B", FORAMINA, 1, "B", {}),
    (reply("B. Foramen ovale and rotundum"), "B", FORAMINA, 1, "B", {}),
    (reply("A. Foramen ovale and rotundum"), "A", FORAMINA, -1, None, {}),
    (reply("B. Foramen ovale"), "B", FORAMINA, -1, None, {}),
    # PubMedQA: yes, no, maybe are option texts
    (reply("yes"), "A", PUBMEDQA, 1, "A", {}),
    (reply("No."), "A", PUBMEDQA, 0, "B", {}),
    (reply("Maybe"), "C", PUBMEDQA, 1, "C", {}),
    (reply("The answer is maybe"), "C", PUBMEDQA, 1, "C", {}),
    (reply("C. maybe"), "C", PUBMEDQA, 1, "C", {}),
    (reply("yes or no"), "A", PUBMEDQA, -1, None, {}),
    (reply("Yes, maybe"), "A", PUBMEDQA, -1, None, {}),
    # a minus sign is no separator: "-20" is option B's text, not "20"
    (reply("The answer is -20"), "B", SIGNED, 1, "B", {}),
    (reply("The answer is -20"), "A", SIGNED, 0, "B", {}),
    (reply("Answer - -20"), "B", SIGNED, 1, "B", {}),
    (reply("The answer is \u221220"), "B", SIGNED, 1, "B", {}),  # the minus sign U+2212
    # option texts that are quoted, or end like a tail, resolve in every form
    (reply("The answer is \u201cI cannot tell you.\u201d"), "A", QUOTED, 1, "A", {}),
    (reply("Answer: \u201cI cannot tell you.\u201d"), "A", QUOTED, 1, "A", {}),
    (reply("\u201cI cannot tell you.\u201d is the best option"), "A", QUOTED, 1, "A", {}),
    (reply("B. Reject it if the alternative hypothesis is true."), "B", HYPOTHESES, 1, "B", {}),
    (reply("Reject it if the alternative hypothesis is true."), "B", HYPOTHESES, 1, "B", {}),
    (reply("Reject it if the alternative hypothesis is true. (B)"), "B", HYPOTHESES, 1, "B", {}),
    # the paper's hacks
    ("<think>The answer is B.</think><answer>B</answer>", "B", "ABCD", 1, "B", {}),
    ("Urate crystals mean gout, so B.\n<think>B</think><answer>B</answer>", "B", "ABCD", 1, "B", {}),
    ("Urate crystals mean gout, so B.\n<think>B</think><answer>B</answer>", "B", "ABCD", -1, None,
     {"strict": True}),
    (" \n<think>x</think><answer>B</answer>", "B", "ABCD", 1, "B", {"strict": True}),
    # tags: nested, repeated, out of order, unclosed, wrong case
    ("<think>x <think>y</think> z</think><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><think>y</think><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>B</answer><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>A</answer><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<answer>B</answer><think>x</think>", "B", "ABCD", -1, None, {}),
    ("<think>x<answer>B</answer></think>", "B", "ABCD", -1, None, {}),
    ("<think>x <answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>B", "B", "ABCD", -1, None, {}),
    ("</think>x<think><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<THINK>x</THINK><ANSWER>B</ANSWER>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><ANSWER>B</ANSWER>", "B", "ABCD", -1, None, {}),
    ("<Think>x</Think><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think >x</think><answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("B", "B", "ABCD", -1, None, {}),
    ("", "B", "ABCD", -1, None, {}),
    # what may sit between and after the blocks
    ("<think>x</think>So B.<answer>B</answer>", "B", "ABCD", -1, None, {}),
    ("<think>x</think>\n\n<answer>B</answer>", "B", "ABCD", 1, "B", {}),
    ("<think>x</think><answer>B</answer> I hope this helps.", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>B</answer><|im_end|>", "B", "ABCD", 1, "B", {}),
    ("<think>x</think><answer>B</answer>\n<|endoftext|>\n<|endoftext|>", "B", "ABCD", 1, "B", {}),
    ("<think>x</think><answer>B</answer><|im_end|>B", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>B</answer><|IM_END|>", "B", "ABCD", -1, None, {}),
    ("<think>x</think><answer>B</answer></s>", "B", "ABCD", 1, "B", {}),
    ("<think>x</think><answer>B</answer><|eot_id|>", "B", "ABCD", 1, "B", {}),
    # min_think_words
    (reply("B", think="one two three"), "B", "ABCD", 1, "B", {"min_think_words": 3}),
    (reply("B", think="one two"), "B", "ABCD", -1, None, {"min_think_words": 3}),
    (reply("B", think=" "), "B", "ABCD", -1, None, {"min_think_words": 1}),
]


@pytest.mark.parametrize("response,gold,options,reward,pred,kwargs", CASES)
def test_table(response, gold, options, reward, pred, kwargs):
    s = score(response, gold, options, **kwargs)
    assert (s.reward, s.pred) == (reward, pred)
    assert s.format_ok == (reward != -1)
    assert s.correct == (reward == 1)
    assert (s.reason == "") == s.format_ok


def test_table_is_big_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("response,reason", [
    ("<think>x</think><answer>B</answer><answer>B</answer>", "2 <answer> tags"),
    (reply("A or B"), "answer names 2 options: A, B"),
    (reply("A, B, C"), "answer names 3 options: A, B, C"),
    (reply(""), "empty answer"),
    (reply("A patient with gout"), "answer names no offered option"),
    (reply("E"), "letter E is not offered"),
    (reply("The answer is (E)."), "letter E is not offered"),
    (reply("B, because it fits"), "answer names B but is no form of the answer grammar"),
    ("<think>x</think><answer>B", "<answer> is not closed"),
    ("<answer>B</answer><think>x</think>", "<answer> before <think>"),
    ("<think>x</think><answer>B</answer>?", "text after </answer>"),
])
def test_reason(response, reason):
    assert reason in score(response, "B").reason


def test_reason_for_two_readings():
    """A letter form wins over a text form, but two letter forms that name two options are no choice."""
    crossed = {"A": "x", "B": "y", "C": "D", "D": "C"}
    assert score(reply("C (D)"), "C", crossed).reason == "answer reads as 2 options: C, D"
    assert score(reply("C"), "C", crossed).reward == 1  # the letter, not option D's text
    assert score(reply("Aspirin"), "A", TWINS).reason == "answer reads as 2 options: A, B"


def test_signals():
    s = score("Let me think step by step here.\n<think>a b c</think><answer>B</answer>", "B")
    assert (s.words_before_think, s.think_words, s.trailing_text) == (7, 3, False)
    s = score("<think>a b</think><answer>B</answer> more", "B")
    assert (s.trailing_text, s.reward, s.think_words) == (True, -1.0, 2)
    assert isinstance(s, Score)


@pytest.mark.parametrize("think,answer,options,states", [
    ("The answer is B.", "B", "ABCD", True),
    ("B", "B", "ABCD", True),
    ("Answer: (B)", "B", "ABCD", True),
    ("Gout, so it is B.", "B", "ABCD", True),
    ("Gout; give ciprofloxacin", "B", DRUGS, True),  # the option text of pred
    ("Urate crystals in the joint.", "B", "ABCD", False),
    ("The answer is C.", "B", "ABCD", False),  # names another letter
    ("The answer is A patient with gout", "A", "ABCD", False),  # the article, not option A
    ("Gout; not ciprofloxacin", "C", DRUGS, False),  # another option's text
    ("", "B", "ABCD", False),
    ("B is the answer.", "B", "ABCD", True),
    ("Option B is correct.", "B", DRUGS, True),
    ("(B) is right", "B", DRUGS, True),
    ("B!", "B", "ABCD", True),
    ("B, obviously.", "B", DRUGS, True),
    ("the answer is b", "B", "ABCD", True),
    ("B, C and D are all antibiotics; gout needs none of them, so it is unclear.", "B", "ABCD", True),  # names B
    ("I think it is gout.", "I", TEN, False),  # the pronoun
])
def test_think_states_answer(think, answer, options, states):
    s = score(reply(answer, think=think), answer, options)
    assert s.reward == 1 and s.think_states_answer is states


def test_bad_arguments():
    with pytest.raises(ValueError, match="gold answer 'E'"):
        score(reply("A"), "E")
    with pytest.raises(ValueError, match="gold answer"):
        score(reply("A"), "AB")
    with pytest.raises(ValueError, match="upper-case letters"):
        score(reply("A"), "A", "abcd")
    with pytest.raises(ValueError, match="upper-case letters"):
        score(reply("A"), "A", "AAB")
    with pytest.raises(ValueError, match="upper-case letters"):
        score(reply("A"), "A", {"AB": "x", "C": "y"})
    with pytest.raises(ValueError, match="option 'B' must be a str"):
        score(reply("A"), "A", {"A": "x", "B": 2})
    with pytest.raises(TypeError, match="options must be"):
        score(reply("A"), "A", 4)
    with pytest.raises(ValueError, match="at most 26 option texts"):
        score(reply("A"), "A", [f"drug {i}" for i in range(27)])
    with pytest.raises(ValueError, match="option 'B' must be a str"):
        score(reply("A"), "A", ["x", 2])


def test_options_as_lists():
    """A list of the letters A, B, C, ... is the same as their string; any other list is option texts, lettered A, B,
    ... in order: MedQA test line 455 offers the texts "A", "B", "C" and "E" (gold D, "E")."""
    assert score(reply("D"), "D", ["A", "B", "C", "E"]).reward == 1
    assert score(reply("E"), "D", ["A", "B", "C", "E"]).reward == 1  # the text of option D
    assert score(reply("A"), "B", ["B", "C", "D", "E"]) == score(reply("A"), "B", dict(zip("ABCD", "BCDE")))
    texts = list(DRUGS.values())
    for r in ("C", "C. Ceftriaxone", "Ceftriaxone", "C. Gentamicin", "A or C", "E"):
        assert score(reply(r), "C", list("ABCD")) == score(reply(r), "C", "ABCD")
        assert score(reply(r), "C", tuple(texts)) == score(reply(r), "C", DRUGS)
    assert score(reply("Ceftriaxone"), "C", texts).reward == 1
    assert score(reply("Ceftriaxone"), "C", list("ABCD")).reward == -1
    assert score(reply("E"), "E", ["a", "b", "c", "d", "e"]).reward == 1
    assert score(reply("**"), "A", ["**", "x"]).reward == -1  # an option whose text normalises to nothing


def test_demo_task_replies_score():
    """data.py's synthetic task: dict options of made-up names, replies <think>...</think>\\n<answer>C</answer>."""
    options = {"A": "Zorvax", "B": "Quilbanol", "C": "Merdinex", "D": "Talvomil"}
    assert score("<think>\n</think>\n<answer>C</answer>", "C", options).reward == 1
    assert score("<think>Merdinex treats it.</think>\n<answer>C</answer><|endoftext|>", "B", options).reward == 0


# ---- pattern()

def words(n):
    return " ".join(f"w{i}" for i in range(n))  # n words, none a letter


@pytest.mark.parametrize("response,label", [
    ("B", "format_failure"),
    ("<think>x</think><answer>A or B</answer>", "format_failure"),
    (words(OUTSIDE_WORDS) + "<think>" + words(20) + "</think><answer>B</answer>", "outside_reasoning"),
    (words(OUTSIDE_WORDS - 1) + "<think>" + words(20) + "</think><answer>B</answer>", "concise"),
    (words(OUTSIDE_WORDS) + "<think>The answer is B.</think><answer>B</answer>", "outside_reasoning"),
    ("<think>The answer is B.</think><answer>B</answer>", "direct_answer"),
    ("<think></think><answer>B</answer>", "direct_answer"),
    ("<think>B is the answer.</think><answer>B</answer>", "direct_answer"),
    ("<think>" + words(DIRECT_WORDS - 4) + " the answer is B</think><answer>B</answer>", "direct_answer"),
    ("<think>" + words(DIRECT_WORDS - 3) + " the answer is B</think><answer>B</answer>", "concise"),
    ("<think>It is D, not C.</think><answer>C</answer>", "direct_answer"),  # names a letter, whichever
    ("<think>the answer is c</think><answer>C</answer>", "direct_answer"),
    ("<think>Urate crystals mean gout.</think><answer>B</answer>", "concise"),  # short, names nothing
    ("<think>A patient with gout.</think><answer>B</answer>", "concise"),  # the article
    ("<think>I think gout.</think><answer>B</answer>", "concise"),  # the pronoun
    ("<think>" + words(VERBOSE_WORDS - 1) + "</think><answer>B</answer>", "concise"),
    ("<think>" + words(VERBOSE_WORDS) + "</think><answer>B</answer>", "verbose"),
])
def test_pattern(response, label):
    assert pattern(response) == label


def test_pattern_names_option_texts():
    assert pattern(reply("C", think="Metformin is first-line here."), EXAMPLE_OPTIONS) == "direct_answer"
    assert pattern(reply("C", think="Glipizide would cause hypoglycaemia."), EXAMPLE_OPTIONS) == "direct_answer"
    assert pattern(reply("C", think="Type 2 diabetes, newly found."), EXAMPLE_OPTIONS) == "concise"
    assert pattern(reply("C", think="Metformin " + words(DIRECT_WORDS)), EXAMPLE_OPTIONS) == "concise"


def test_pattern_without_options_takes_ten_letters():
    assert pattern(reply("H", think=" ".join(["w"] * 20))) == "concise"
    assert pattern(reply("K", think=" ".join(["w"] * 20))) == "format_failure"


def test_pattern_covers_every_label():
    replies = ["B", "<think>" + words(200) + "</think><answer>B</answer>",
               "<think>" + words(30) + "</think><answer>B</answer>", "<think>B</think><answer>B</answer>",
               words(50) + "<think>" + words(30) + "</think><answer>B</answer>"]
    assert sorted(pattern(r) for r in replies) == sorted(PATTERNS)


# ---- fuzz of whole replies against a reference parse of the format

def ref_structure_ok(r):
    """The default format rule, written independently with str methods."""
    if any(r.count(t) != 1 for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    a, b, c, d = (r.index(t) for t in ("<think>", "</think>", "<answer>", "</answer>"))
    if not a < b < c < d:
        return False
    tail = r[d + len("</answer>"):]
    for eos in ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<|eot_id|>", "<|end_of_text|>"):
        tail = tail.replace(eos, "")
    return r[b + len("</think>"):c].strip() == "" and tail.strip() == ""


def ref_content(r):
    return r[r.index("<answer>") + len("<answer>"):r.index("</answer>")]


LEAD = {"so", "thus", "therefore", "hence", "my", "the", "final", "correct", "best", "right", "most", "likely",
        "true", "answer", "is", "option", "choice"}


def ref_names_only(content, gold, letters, texts):
    """Necessary for reward 1: the first word after answer-ish words is the gold letter, or the
    answer holds the gold option's text; and no other offered letter is offered as an alternative."""
    first = [w for w in re.findall(r"[A-Za-z0-9]+", content) if w.lower() not in LEAD][:1]
    by_letter = first == [gold] or first == [gold.lower()]
    by_text = texts is not None and " ".join(texts[gold].split()).casefold() in " ".join(content.split()).casefold()
    for m in re.finditer(r"(?:\b(?:or|and)\s+|[,/]\s*|\()([A-Z])(?![A-Za-z0-9])", content):
        other = m.group(1)
        article = other == "A" and re.match(r"\s+[a-z]", content[m.end():])
        if other in letters and other != gold and not article:
            return False
    return by_letter or by_text


FUZZ_OPTIONS = ["ABCD", "ABC", TEN, DRUGS, {"A": "Lupus", "B": "Gout", "C": "Sarcoidosis"}]
FUZZ_WORDS = ["the", "patient", "a", "A", "I", "B", "C", "E", "J", "or", "and", "answer", "is", "Answer:",
              "(C)", "gout", ".", ",", "/", "**", "Option", "Gout", "Ceftriaxone", "\n", "c"]
FORMS = ["{L}", "{L}.", "({L})", "{L})", "[{L}]", "{L}: {T}", "{L}. {T}", "({L}) {T}", "The answer is {L}",
         "Answer: ({L})", "**{L}**", "{l}", "({l})", "{T}", "{L} or {M}", "{L}, {M}", "{L}{M}", "", " ",
         "{L}. or {M}", "{W}"]
JUNK = ["<think>", "</think>", "<answer>", "</answer>", "<THINK>", "<Answer>", "<|im_end|>", "<|endoftext|>", "</s>",
        "\n", " ", "<", ">", "/"]


def make_reply(rng, letters, texts, gold):
    pool = letters + "EKZ"
    L, M = gold if rng.random() < 0.5 else rng.choice(pool), rng.choice(pool)
    text = texts[L] if texts and L in texts and rng.random() < 0.7 else rng.choice(["Gout", "Ceftriaxone", "x y"])
    ans = rng.choice(FORMS).format(L=L, M=M, l=L.lower(), T=text, W=" ".join(rng.choices(FUZZ_WORDS, k=4)))
    think = " ".join(rng.choices(FUZZ_WORDS, k=rng.randint(0, 30)))
    before = " ".join(rng.choices(FUZZ_WORDS, k=rng.randint(1, 12))) if rng.random() < 0.2 else ""
    after = rng.choice(["", "", "<|im_end|>", "\n<|endoftext|>", " ok"])
    return f"{before}<think>{think}</think>{rng.choice(['', chr(10)])}<answer>{ans}</answer>{after}"


def mutate(rng, r, other):
    op = rng.randrange(7)
    i = rng.randint(0, len(r))
    if op == 0:  # insert a tag or junk
        return r[:i] + rng.choice(JUNK) + r[i:]
    if op == 1:  # delete a tag
        tags = [m.span() for m in re.finditer(r"</?(?:think|answer)>", r)]
        if tags:
            a, b = rng.choice(tags)
            return r[:a] + r[b:]
        return r
    if op == 2:  # duplicate a slice
        j = rng.randint(i, len(r))
        return r[:j] + r[i:j] + r[j:]
    if op == 3:  # random letters
        return r[:i] + "".join(rng.choices("ABCDEFGHIJabcd ().", k=rng.randint(1, 3))) + r[i:]
    if op == 4:  # random unicode, surrogates included
        return r[:i] + "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 4))) + r[i:]
    if op == 5:  # truncate
        return r[:i]
    return r[:i] + other[rng.randint(0, len(other)):]  # splice two replies


def test_fuzz():
    rng = random.Random(0)
    rewards = {-1.0: 0, 0.0: 0, 1.0: 0}
    for n in range(5000):
        options = rng.choice(FUZZ_OPTIONS)
        letters = "".join(options)
        texts = options if isinstance(options, dict) else None
        gold = rng.choice(letters)
        r = make_reply(rng, letters, texts, gold)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            r = mutate(rng, r, make_reply(rng, letters, texts, gold))
        strict = n % 5 == 0
        s = score(r, gold, options, strict=strict)
        rewards[s.reward] += 1
        assert s.reward in (-1.0, 0.0, 1.0), r
        assert pattern(r, options) in PATTERNS, r
        if s.reward != -1:
            assert ref_structure_ok(r), r
            assert s.pred in letters and s.format_ok and s.reason == "", r
            if strict:
                assert r[:r.index("<think>")].strip() == "", r
        if s.reward == 1:
            assert s.pred == gold and ref_names_only(ref_content(r), gold, letters, texts), r
        if ref_structure_ok(r) and not (strict and r[:r.index("<think>")].strip()):
            content = ref_content(r).strip()
            if content == gold:
                assert s.reward == 1, r
            elif len(content) == 1 and content in letters:
                assert (s.reward, s.pred) == (0, content), r
            elif content == "":
                assert s.reward == -1, r
    # the fuzz reaches every outcome, so the checks above are exercised
    assert min(rewards.values()) > 200, rewards


def test_fast_on_long_and_hostile_input():
    hostile = [
        "<think>" + "answer " + " " * 50_000 + "x</think><answer>" + "(" * 20_000 + "B</answer>",
        "<think>" + "A " * 50_000 + "</think><answer>" + "The answer is " + " " * 50_000 + "B</answer>",
        "<think>x</think><answer>C. " + "or B " * 20_000 + "</answer>",
        "<think>" * 10_000 + "</answer>" * 10_000,
        "<think>C" + " " * 50_000 + "x</think><answer>C" + "\n" * 50_000 + "is correct</answer>",
        "<think>x</think><answer>" + "\\boxed{" * 10_000 + "C" + "}" * 10_000 + "</answer>",
        "<think>x</think><answer>the answer is " * 5_000 + "C</answer>",
        "<think>x</think><answer>" + "C (" * 10_000 + "Metformin" + ")" * 10_000 + "</answer>",
    ]
    t = time.perf_counter()
    for r in hostile:
        score(r, "B", TEN)
        score(r, "C", EXAMPLE_OPTIONS)
        pattern(r, TEN)
    typical = reply("B", think=" ".join(["urate crystals in the synovial fluid"] * 40))
    for _ in range(2000):
        score(typical, "B", DRUGS)
    assert time.perf_counter() - t < 3.0
