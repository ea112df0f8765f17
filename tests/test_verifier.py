"""Tests for verifier.py: hand-checked replies, a fuzz against a simple reference parse,
pattern() labels and thresholds, and the option texts of the real data sets.

Run: .venv/bin/python -m pytest -q tests/test_verifier.py
"""
import json
import random
import re
import time
from pathlib import Path

import pytest

from verifier import DIRECT_WORDS, OUTSIDE_WORDS, PATTERNS, VERBOSE_WORDS, Score, pattern, score

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

THINK = "Urate crystals in the joint point to gout."  # 8 words, names no letter
DRUGS = {"A": "Gentamicin", "B": "Ciprofloxacin", "C": "Ceftriaxone", "D": "Trimethoprim"}
BUGS = {"A": "S. aureus", "B": "C. difficile", "C": "E. coli", "D": "Listeria"}
VITAMINS = {"A": "Vitamin A", "B": "Vitamin D", "C": "Vitamin K", "D": "Vitamin E"}
TWINS = {"A": "Aspirin", "B": "aspirin.", "C": "Heparin", "D": "Warfarin"}
TEN = "ABCDEFGHIJ"
SIGNED = {"A": "20", "B": "-20", "C": "80", "D": "-80"}
QUOTED = {"A": "\u201cI cannot tell you.\u201d", "B": "\u201cAsk her yourself.\u201d", "C": "Call the police", "D": "Nothing"}
HYPOTHESES = {"A": "Accept it", "B": "Reject it if the alternative hypothesis is true.", "C": "Neither", "D": "Both"}


def reply(ans, think=THINK):
    return f"<think>{think}</think><answer>{ans}</answer>"


# (response, gold, options, reward, pred, score kwargs); every expectation checked by hand
CASES = [
    # accepted forms
    (reply("C"), "C", "ABCD", 1, "C", {}),
    (reply("C."), "C", "ABCD", 1, "C", {}),
    (reply("(C)"), "C", "ABCD", 1, "C", {}),
    (reply("C)"), "C", "ABCD", 1, "C", {}),
    (reply("[C]"), "C", "ABCD", 1, "C", {}),
    (reply("C: Ceftriaxone"), "C", "ABCD", 1, "C", {}),
    (reply("C. Ceftriaxone"), "C", "ABCD", 1, "C", {}),
    (reply("C) Ceftriaxone"), "C", "ABCD", 1, "C", {}),
    (reply("(C) Ceftriaxone"), "C", "ABCD", 1, "C", {}),
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
    (reply("C: Hepatitis B"), "C", "ABCD", 1, "C", {}),  # letter-only options: a letter inside a term
    (reply("C. B-cell lymphoma"), "C", "ABCD", 1, "C", {}),
    (reply("C. E. coli sepsis"), "C", "ABCDE", 1, "C", {}),
    (reply("C. A patient with gout"), "C", "ABCD", 1, "C", {}),
    (reply("The answer is **C**."), "C", "ABCD", 1, "C", {}),
    (reply("\\boxed{C}"), "C", "ABCD", 1, "C", {}),
    (reply("C - Ceftriaxone"), "C", "ABCD", 1, "C", {}),
    (reply("C \u2013 Ceftriaxone"), "C", "ABCD", 1, "C", {}),
    (reply("So the best answer is C"), "C", "ABCD", 1, "C", {}),
    (reply("Therefore, the answer is C."), "C", "ABCD", 1, "C", {}),
    (reply("My final answer: C"), "C", "ABCD", 1, "C", {}),
    (reply("the answer is c"), "C", "ABCD", 1, "C", {}),
    (reply("option c"), "C", "ABCD", 1, "C", {}),
    (reply("c)"), "C", "ABCD", 1, "C", {}),
    (reply("B. Type A personality"), "B", "ABCD", 1, "B", {}),
    (reply("C. Hepatitis B. Start tenofovir."), "C", "ABCD", 1, "C", {}),
    (reply("A. C difficile infection"), "A", "ABCD", 1, "A", {}),
    (reply("C. B pertussis"), "C", "ABCD", 1, "C", {}),
    (reply("C (Ceftriaxone)"), "C", DRUGS, 1, "C", {}),
    (reply("The answer is C (Ceftriaxone)."), "C", DRUGS, 1, "C", {}),
    (reply("C (Ceftriaxone)"), "C", "ABCD", 1, "C", {}),
    (reply("The most appropriate answer is C."), "C", "ABCD", 1, "C", {}),
    (reply("C. Vitamin B12 deficiency"), "C", "ABCD", 1, "C", {}),
    (reply("(B) Group B streptococcus"), "B", "ABCD", 1, "B", {}),
    (reply("**Answer:** C"), "C", "ABCD", 1, "C", {}),
    (reply("$\\boxed{C}$"), "C", "ABCD", 1, "C", {}),
    (reply("The correct option is C"), "C", "ABCD", 1, "C", {}),
    (reply("C. **Ceftriaxone**"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone, because it covers N. gonorrhoeae."), "C", DRUGS, 1, "C", {}),
    (reply("C: Ceftriaxone\n\nIt is a third-generation cephalosporin."), "C", DRUGS, 1, "C", {}),
    (reply("C. Gout (A classic case)"), "C", "ABCD", 1, "C", {}),  # "(A classic": the article
    # wrong but well-formed
    (reply("B"), "C", "ABCD", 0, "B", {}),
    (reply("The answer is B."), "C", "ABCD", 0, "B", {}),
    # lower case is only safe standing alone
    (reply("c. ceftriaxone"), "C", "ABCD", -1, None, {}),
    (reply("Patient answer is C"), "C", "ABCD", -1, None, {}),  # a lead-in word not in LEAD_WORDS
    (reply("B answer is C"), "C", "ABCD", -1, None, {}),
    # two or more options
    (reply("A or B"), "A", "ABCD", -1, None, {}),
    (reply("A, C"), "A", "ABCD", -1, None, {}),
    (reply("A and B"), "B", "ABCD", -1, None, {}),
    (reply("A/B"), "A", "ABCD", -1, None, {}),
    (reply("AB"), "A", "ABCD", -1, None, {}),
    (reply("(A) or (B)"), "A", "ABCD", -1, None, {}),
    (reply("C. or B"), "C", "ABCD", -1, None, {}),
    (reply("C: Vitamins A and D"), "C", "ABCD", -1, None, {}),
    (reply("C. The answer is B"), "C", "ABCD", -1, None, {}),  # letter-only: another letter as a choice
    (reply("C) D)"), "C", "ABCD", -1, None, {}),
    (reply("C. B"), "C", "ABCD", -1, None, {}),
    (reply("C.\nB."), "C", "ABCD", -1, None, {}),
    (reply("(C) B"), "C", "ABCD", -1, None, {}),
    (reply("C: either B"), "C", "ABCD", -1, None, {}),
    (reply("C. Not A but B"), "C", "ABCD", -1, None, {}),
    (reply("C. Option B"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone; B"), "C", "ABCD", -1, None, {}),
    (reply("C. **B**"), "C", "ABCD", -1, None, {}),
    (reply("C. B is also correct"), "C", "ABCD", -1, None, {}),
    (reply("C. D too"), "C", "ABCD", -1, None, {}),
    (reply("C) Ceftriaxone D) Gentamicin"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone (although B is also reasonable)"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone, though D might work too"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone; alternatively B"), "C", "ABCD", -1, None, {}),
    (reply("C (Gentamicin)"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, not Gentamicin"), "C", DRUGS, -1, None, {}),  # names option A by its text
    (reply("C. Ceftriaxone, or B"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone 1 g IM"), "C", DRUGS, -1, None, {}),  # not a justification: other wording
    (reply("A. Aspirin, because it helps."), "B", TWINS, 0, "A", {}),  # the letter settles the twin texts
    # letter-only, ambiguous: "B." after a word reads as the end of a term, as in "Hepatitis B. Start tenofovir"
    (reply("C. Ceftriaxone B. Vancomycin"), "C", "ABCD", 1, "C", {}),
    (reply("The answer is C. D is also possible"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone, not B"), "C", "ABCD", -1, None, {}),
    (reply("C. Ceftriaxone, D is wrong"), "C", "ABCD", -1, None, {}),
    # empty answers
    (reply(""), "A", "ABCD", -1, None, {}),
    (reply(" "), "A", "ABCD", -1, None, {}),
    (reply("\n\t"), "A", "ABCD", -1, None, {}),
    (reply("****"), "A", "ABCD", -1, None, {}),
    # letters not offered, and letters that are words
    (reply("E"), "A", "ABCD", -1, None, {}),
    (reply("D"), "A", "ABC", -1, None, {}),
    (reply("C"), "C", "ABC", 1, "C", {}),
    (reply("J"), "J", TEN, 1, "J", {}),
    (reply("I"), "I", TEN, 1, "I", {}),
    (reply("I."), "A", "ABCD", -1, None, {}),
    (reply("I think the answer is C"), "C", TEN, -1, None, {}),
    (reply("A patient with gout"), "A", "ABCD", -1, None, {}),
    (reply("The answer is A patient with gout"), "A", "ABCD", -1, None, {}),
    (reply("A"), "A", "ABCD", 1, "A", {}),
    (reply("The answer is C because urate crystals are seen."), "C", "ABCD", -1, None, {}),
    (reply("C\n\nUrate crystals are seen."), "C", "ABCD", -1, None, {}),
    (reply("AnswerC"), "C", "ABCD", -1, None, {}),
    # option texts (dict options)
    (reply("Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("  ceftriaxone. "), "C", DRUGS, 1, "C", {}),
    (reply("The answer is Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("Ciprofloxacin"), "C", DRUGS, 0, "B", {}),
    (reply("C. Ceftriaxone"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ciprofloxacin"), "C", DRUGS, -1, None, {}),  # letter contradicts its text
    (reply("B. Ceftriaxone"), "C", DRUGS, -1, None, {}),
    (reply("Ceftriaxone or Gentamicin"), "C", DRUGS, -1, None, {}),
    (reply("Amoxicillin"), "C", DRUGS, -1, None, {}),
    (reply("Aspirin"), "A", TWINS, -1, None, {}),  # the text of two options
    (reply("C. difficile"), "B", BUGS, 1, "B", {}),  # option text that starts like a letter
    (reply("C"), "C", BUGS, 1, "C", {}),
    (reply("Vitamin A"), "A", VITAMINS, 1, "A", {}),
    (reply("A. Vitamin A"), "A", VITAMINS, 1, "A", {}),
    # hedges: a second option named as an alternative (fifth session's audit)
    (reply("C. Ceftriaxone, consider A too"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, yet A is also reasonable"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone, while A is also reasonable"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone; otherwise A"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone (A works too)"), "C", DRUGS, -1, None, {}),
    (reply("C. A works too"), "C", "ABCD", -1, None, {}),
    (reply("C (D works too)"), "C", "ABCD", -1, None, {}),
    (reply("C. otherwise D too"), "C", "ABCD", -1, None, {}),
    # ...but not after a preposition or an additive word, where a term's letter stands as often (sixth session)
    (reply("C. SCID, caused by B and T cell dysfunction"), "C", "ABCD", 1, "C", {}),
    (reply("C. Anti-D immunoglobulin; she is not sensitized to D."), "C", "ABCD", 1, "C", {}),
    (reply("C. Missense, the codon changes G to A."), "C", "ABCD", 1, "C", {}),
    (reply("C. Hepatitis D, which needs coinfection with B."), "C", "ABCD", 1, "C", {}),
    (reply("C. Calcium, supplemented with D"), "C", "ABCD", 1, "C", {}),
    (reply("C. Ceftriaxone; infection with E. coli is unlikely"), "C", "ABCD", 1, "C", {}),
    (reply("C. Natural killer cells, because besides B and T cells only NK cells are lymphocytes"), "C", "ABCD", 1,
     "C", {}),
    (reply("C. Natural killer cells; alongside B and T cells they arise from lymphoid progenitors"), "C", "ABCD", 1,
     "C", {}),
    # ...while a term with a letter in the justification is still no second option
    (reply("C. Ceftriaxone, because hepatitis B is not the issue"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone, since vitamin D can wait"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone, because it treats hepatitis B too"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone; give vitamin D instead of calcium"), "C", DRUGS, 1, "C", {}),
    (reply("C. Ceftriaxone, since the hepatitis B work-up is negative"), "C", "ABCD", 1, "C", {}),
    (reply("C. Ceftriaxone - A 45-year-old man needs gonococcal coverage"), "C", DRUGS, 1, "C", {}),  # the article
    (reply("C. Ceftriaxone. A 45-year-old man needs it"), "C", "ABCD", 1, "C", {}),
    (reply("C. Ceftriaxone, or A 5 mg"), "C", DRUGS, -1, None, {}),
    # a minus sign is no separator: "-20" is option B's text, not "20"
    (reply("The answer is -20"), "B", SIGNED, 1, "B", {}),
    (reply("The answer is -20"), "A", SIGNED, 0, "B", {}),
    (reply("Answer - -20"), "B", SIGNED, 1, "B", {}),
    # option texts that are quoted, or end like an "is the answer" tail, resolve in every form
    (reply("The answer is \u201cI cannot tell you.\u201d"), "A", QUOTED, 1, "A", {}),
    (reply("Answer: \u201cI cannot tell you.\u201d"), "A", QUOTED, 1, "A", {}),
    (reply("\u201cI cannot tell you.\u201d is the best option"), "A", QUOTED, 1, "A", {}),
    (reply("B. Reject it if the alternative hypothesis is true."), "B", HYPOTHESES, 1, "B", {}),
    (reply("Reject it if the alternative hypothesis is true."), "B", HYPOTHESES, 1, "B", {}),
    # text glued to the option's text by a hyphen is another word, not option C
    (reply("C. Ceftriaxone-resistant gonorrhea"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone-free regimen"), "C", DRUGS, -1, None, {}),
    (reply("C. Ceftriaxone - it covers gonorrhea"), "C", DRUGS, 1, "C", {}),
    # one letter, in forms a reader takes for an answer
    (reply("C is the answer"), "C", "ABCD", 1, "C", {}),
    (reply("C is correct."), "C", "ABCD", 1, "C", {}),
    (reply("(C) is the most likely answer"), "C", DRUGS, 1, "C", {}),
    (reply("Ceftriaxone is the best option"), "C", DRUGS, 1, "C", {}),
    (reply("A or C is correct"), "C", "ABCD", -1, None, {}),
    (reply("'C'"), "C", "ABCD", 1, "C", {}),
    (reply("*C*"), "C", "ABCD", 1, "C", {}),
    (reply("`C`"), "C", "ABCD", 1, "C", {}),
    (reply("\u201cCeftriaxone\u201d"), "C", DRUGS, 1, "C", {}),
    (reply("C)."), "C", "ABCD", 1, "C", {}),
    (reply("C!"), "C", "ABCD", 1, "C", {}),
    (reply("Answer - C"), "C", "ABCD", 1, "C", {}),
    (reply("'C' or 'D'"), "C", "ABCD", -1, None, {}),
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
    ("<think>x</think><answer>B", "<answer> is not closed"),
    ("<answer>B</answer><think>x</think>", "<answer> before <think>"),
    ("<think>x</think><answer>B</answer>?", "text after </answer>"),
])
def test_reason(response, reason):
    assert reason in score(response, "B").reason


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
    ("The answer is C.", "B", "ABCD", False),  # states another letter
    ("The answer is A patient with gout", "A", "ABCD", False),  # the article, not option A
    ("Gout; not ciprofloxacin", "C", DRUGS, False),  # another option's text
    ("", "B", "ABCD", False),
    ("B is the answer.", "B", "ABCD", True),  # the letter first (fifth session's audit)
    ("Option B is correct.", "B", DRUGS, True),
    ("(B) is right", "B", DRUGS, True),
    ("B!", "B", "ABCD", True),
    ("B, obviously.", "B", DRUGS, True),
    ("B, C and D are all antibiotics; gout needs none of them, so it is unclear.", "B", "ABCD", False),
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
    ("<think>Urate crystals mean gout.</think><answer>B</answer>", "concise"),  # short, states nothing
    ("<think>" + words(VERBOSE_WORDS - 1) + "</think><answer>B</answer>", "concise"),
    ("<think>" + words(VERBOSE_WORDS) + "</think><answer>B</answer>", "verbose"),
])
def test_pattern(response, label):
    assert pattern(response) == label


def test_pattern_without_options_takes_ten_letters():
    assert pattern(reply("H", think=" ".join(["w"] * 20))) == "concise"
    assert pattern(reply("K", think=" ".join(["w"] * 20))) == "format_failure"


def test_pattern_covers_every_label():
    replies = ["B", "<think>" + words(200) + "</think><answer>B</answer>",
               "<think>" + words(30) + "</think><answer>B</answer>", "<think>B</think><answer>B</answer>",
               words(50) + "<think>" + words(30) + "</think><answer>B</answer>"]
    assert sorted(pattern(r) for r in replies) == sorted(PATTERNS)


# ---- fuzz against a reference parse

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
    ]
    t = time.perf_counter()
    for r in hostile:
        score(r, "B", TEN)
        pattern(r, TEN)
    typical = reply("B", think=" ".join(["urate crystals in the synovial fluid"] * 40))
    for _ in range(2000):
        score(typical, "B", DRUGS)
    assert time.perf_counter() - t < 3.0


# ---- real data: every gold option text resolves to its letter

def load_rows():
    rows = []
    medqa = DATA / "medqa_usmle_4opt" / "phrases_no_exclude_dev.jsonl"
    mmlu_pro = DATA / "mmlu_pro_health" / "mmlu_pro_test_health.jsonl"
    if not (medqa.exists() and mmlu_pro.exists()):
        pytest.skip("real data not found (../shared/data)")
    for line in medqa.open():
        r = json.loads(line)
        rows.append((r["options"], r["answer_idx"]))
    for line in mmlu_pro.open():
        r = json.loads(line)
        rows.append((dict(zip(TEN, r["options"])), r["answer"]))
    return rows


def test_real_option_texts():
    rows = load_rows()
    for options, gold in rows:
        wrong = next(k for k in options if k != gold and options[k].strip() != options[gold].strip())
        assert score(reply(options[gold]), gold, options).reward == 1, options
        assert score(reply(f"{gold}. {options[gold]}"), gold, options).reward == 1, options
        assert score(reply(options[wrong]), gold, options).pred == wrong, options
        assert score(reply(f"{wrong}. {options[gold]}"), gold, options).reward == -1, options
        # a justification after the option's text is allowed; it does not make another letter's text pass
        assert score(reply(f"{gold}. {options[gold]}, because it fits."), gold, options).reward == 1, options
        assert score(reply(f"{wrong}. {options[gold]}, because it fits."), gold, options).reward == -1, options
    assert len(rows) == 1272 + 818
