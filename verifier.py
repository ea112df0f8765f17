"""The reward rule: score one model reply to a multiple-choice question.

This is the verifiable reward of Med-RLVR (Zhang et al. 2025): -1 if the reply breaks the
format, 1 if its answer is the gold option, 0 if it is another option. It is the only signal
PPO sees, so it is written to be strict: whatever it cannot resolve to exactly one offered
option is -1, and a reply can never collect 1 for more than one gold letter.

Format (the default rule, the paper's)
  The reply holds exactly one <think>...</think> followed by exactly one <answer>...</answer>.
  - Between </think> and <answer>: only whitespace.
  - After </answer>: only whitespace and end-of-sequence markers (Qwen's <|endoftext|> and
    <|im_end|>; also </s>, <eos>, <|eot_id|>, <|end_of_text|> of other model families).
  - Before <think>: anything; it is counted in Score.words_before_think, because reasoning
    written there (the paper's "step-by-step exploit") is allowed by this rule.
  - Tags are lower-case and exact: <THINK> or <think > is plain text, not a tag. A missing,
    repeated, unclosed, nested or out-of-order tag is a format failure.
  Options: strict=True also rejects any non-whitespace text before <think>;
  min_think_words=N rejects a think block of fewer than N words. Both are off by default.

Answer (the text inside <answer>...</answer>, stripped)
  It must name exactly one offered letter. Accepted, for gold C of options ABCD:
      C    C.    C:    C)    C).    C!    (C)    [C]    **C**    \boxed{C}    $\boxed{C}$    Option C
      'C'    `C`    *C*    "Ceftriaxone"      (quotes, backticks and italics around the whole answer)
      C. Ceftriaxone    C: Ceftriaxone    C) Ceftriaxone    (C) Ceftriaxone    C - Ceftriaxone    C (Ceftriaxone)
      The answer is C    The answer is (C).    Answer: C    Answer - C    The correct answer is **C**.
      C is the answer    C is correct    (C) is the most likely answer    Ceftriaxone is the best option
      So the best answer is C    **Final answer:** C    The correct option is C
                                 (lead-in words from LEAD_WORDS; bold is ignored everywhere)
      c    c.    c)    (c)    the answer is c      lower case only for the letter alone
      Ceftriaxone                the exact text of one option (dict options only;
                                 case, spacing and a trailing period do not matter)
  Format failures (-1), whatever the gold:
      ""    " "               empty answer
      E                       letter not offered (and D when only ABC are offered)
      A or B    A, C    A/B    A and B    AB    (A) or (B)      two or more options
      C. Gentamicin           with dict options, text after a letter must be that option's text (a
                              justification may follow it if it names no other option:
                              "C. Ceftriaxone, because it covers N. gonorrhoeae" is C; a hyphen
                              glued to the text makes another word: "C. Ceftriaxone-resistant ...")
      A patient with gout     the article "A" is not option A
      I think it is C         an explanation sentence is not an answer ("I" is a letter
                              when ten options are offered)
  A letter form wins over option text ("C" is option C even if some option's text is "C").
  With letter-only options the text after "C." cannot be checked against the option, but it
  may not name another offered letter: one that stands as a choice -- at the start of the text,
  after punctuation, after a word such as "or", "not", "though", "otherwise", "consider" or
  "option" ("consider D too"), before one such as "is", "too", "works" or "could" unless a term's
  word stands before it, or as a label ("C. B is also right", "C) D)", "C) Ceftriaxone D)
  Gentamicin", "C. The answer is B", "C: A and D", "C, though D might work", "(D works too)")
  -- makes the answer name two options. The same holds after an option's text with dict options.
  A letter inside a term does not: "C. Hepatitis B. Start tenofovir", "C. B-cell lymphoma",
  "C. E. coli", "C. B pertussis", "C. A patient ...", "- A 45-year-old man ...", "because hepatitis
  B is chronic". Letters that are themselves an option's wording ("D. Both A and C") need dict
  options to be read right.

Reward: -1.0 if the format fails, else 1.0 if the resolved letter is the gold one, else 0.0.

pattern() labels a reply for the paper's training-dynamics analysis: format_failure,
outside_reasoning, direct_answer, concise or verbose (see the thresholds below).

Run it on one reply:
    python verifier.py "<think>Urate crystals.</think><answer>B</answer>" B
"""
import re
import sys
from dataclasses import dataclass, replace

OPTIONS_DEFAULT = "ABCD"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATTERNS = ("format_failure", "verbose", "concise", "direct_answer", "outside_reasoning")

# pattern() thresholds, in whitespace-separated words.
# A harmless preamble ("Let me think step by step.") is under 10 words; 10 or more words before
# <think> is at least a sentence of content, i.e. reasoning moved outside the think block.
OUTSIDE_WORDS = 10
# Eight words cannot weigh the findings of a clinical vignette; a think this short that states
# the answer ("The answer is B.") or is empty only gives the answer away.
DIRECT_WORDS = 8
# A MedQA vignette alone has a median of ~110 words; reasoning that walks through its findings
# and the options runs past 100 words, while a compact 2-4 sentence chain stays under it.
VERBOSE_WORDS = 100

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
TAG_RE = re.compile(r"</?(?:think|answer)>")
TAIL_RE = re.compile(r"(?:\s|<\|endoftext\|>|<\|im_end\|>|</s>|<eos>|<\|eot_id\|>|<\|end_of_text\|>)*")
WRAP_RE = re.compile(r"\$?\\boxed\{([^{}]+)\}\$?\.?")  # \boxed{C}, $\boxed{C}$ (bold ** is dropped first)
LOWER_RE = re.compile(r"\(([a-z])\)|([a-z])[.)]?")  # c, c., c), (c): lower case only standing alone
# "The answer is", "Answer:", "Answer - ", "So the best answer is", "Option"...: up to four lead-in words from a
# fixed list (never a letter, which could be an option) before "answer", which must end in a space or a colon so
# that "AnswerC" is not read as C; a dash only with spaces around it ("The answer is -20" keeps its minus sign).
LEAD_WORDS = ("so", "thus", "therefore", "hence", "my", "the", "final", "correct", "best", "right", "most",
              "likely", "true", "appropriate", "single")
PREFIX_RE = re.compile(
    rf"(?:(?:(?:{'|'.join(LEAD_WORDS)}),?\s+){{0,4}}(?:answer|option|choice)(?:\s+is)?(?:\s*:|\s+[\u2013\u2014-](?=\s))?\s*"
    r"(?<=[\s:]))?"
    r"(?:(?:option|choice)\s+)?", re.IGNORECASE)
# C  C.  C:  C)  C).  C!  (C)  [C]  then optionally text, after whitespace or a spaced dash, or "C (text)". A bare
# letter must be followed by punctuation, a spaced dash, a parenthesis or the end, which rules out
# "A patient", "AB", "A/B", "A, C" and "A or B".
LETTER_RE = re.compile(
    r"(?:\((?P<p>[A-Z])\)|\[(?P<b>[A-Z])\]|(?P<l>[A-Z])(?=[.:)!]|\s+[-\u2013\u2014]\s|\s+\(|\Z))(?:\)\.|[.:)!])?"
    r"(?:\s+[-\u2013\u2014])?(?:\s+(?P<text>\S.*))?",
    re.DOTALL)
PAREN_RE = re.compile(r"\((.*)\)\.?", re.DOTALL)  # the option's text in parentheses: "C (Ceftriaxone)"
# what may start a justification after the option's text: "Ceftriaxone, because ...", "Ceftriaxone (it covers ...)"
# (a hyphen only after a space: "Heparin-free" and "Heparin-induced ..." are other words, not option B's text)
JUSTIFY_RE = re.compile(r"\s*[,;:(\n\u2013\u2014]|\s+-|\.\s|\s+(?:because|since|as|given)\b", re.IGNORECASE)
# Words around a letter that make it a choice rather than part of a term. Before: "or B", "the answer is B",
# "option B", "though B". After: "B is also right", "D too", "B could work". Not prepositions or additive words,
# which stand before a term's letter as often ("caused by B and T cells", "G to A", "besides B and T cells").
CHOICE_WORDS = {"or", "and", "nor", "vs", "versus", "then", "but", "either", "not", "also", "plus", "is", "answer",
                "option", "choice", "maybe", "perhaps", "probably", "possibly", "though", "although", "however",
                "alternatively", "else", "instead", "unless", "case", "rather", "than", "over", "yet", "while",
                "whereas", "otherwise", "consider", "considering"}
CHOICE_AFTER = {"is", "was", "are", "also", "too", "could", "might", "may", "can", "would", "should", "seems",
                "looks", "or", "and", "nor", "as", "if", "but", "then", "instead", "vs", "versus", "not", "being",
                "works", "work", "fits"}
WORD_BEFORE_RE = re.compile(r"([A-Za-z0-9]+)[ \t-]*\Z")  # the word right before a letter, in the same phrase
WORD_AFTER_RE = re.compile(r"\.?[ \t]+([a-z]+|[0-9])")  # a lower-case word or a digit: "B pertussis", "A 45-year-old"
ARTICLE_RE = re.compile(r"A\s+(?!(?:or|and|nor)\b)[a-z]")  # "A patient": the article, not option A
TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z](?![A-Za-z0-9])")  # a capital letter standing alone
ANSWER_IS_RE = re.compile(
    r"(?i:answer)(?:\s+(?i:is))?(?:\s*:)?\s*(?:(?i:option|choice)\s+)?[(\[*]*([A-Z])(?![A-Za-z0-9])")
END_LETTER_RE = re.compile(r"(?<![A-Za-z0-9])[(\[*]*([A-Z])[)\]*]*[.!]?\s*\Z")  # "...so it's B."
IS_ANSWER_RE = re.compile(  # "C is the answer", "C is correct", "Ceftriaxone is the best option."
    r"\s+is\s+(?:the\s+)?(?:(?:most\s+likely|correct|right|best|final|true)(?:\s+(?:answer|option|choice))?"
    r"|answer|option|choice)\s*[.!]?\Z", re.IGNORECASE)
IS_ANSWER_TAIL = 40  # characters: the longest such tail, and a bound on the regex's work
LEAD_LETTER_RE = re.compile(r"\s*[(\[*]*([A-Z])[)\]*]*(?:[,:;!]|\.\s)")  # a short think opening "B, obviously."
QUOTES = {"'": "'", '"': '"', "`": "`", "*": "*", "_": "_", "\u201c": "\u201d", "\u2018": "\u2019"}


@dataclass(frozen=True)
class Score:
    reward: float  # -1.0, 0.0 or 1.0
    format_ok: bool
    pred: str | None  # the single resolved letter, or None
    correct: bool
    reason: str  # "" when format_ok, else why not
    words_before_think: int  # hacking signal: words before <think>
    think_words: int  # words inside <think>...</think>
    think_states_answer: bool  # the think block already states the final choice
    trailing_text: bool  # non-whitespace text after </answer> other than EOS markers


def parse_options(options):
    """Return (letters, texts): the offered letters as a string, and letter -> text or None. options: letters
    ("ABCD" or ["A", "B", "C", "D"]), a dict letter -> text, or a list of texts, lettered A, B, ... in order (as
    MMLU-Pro ships them). A list is letters only when it is exactly A, B, C, ...: some options' texts are single
    letters (a MedQA item offers "A", "B", "C" and "E")."""
    if isinstance(options, (list, tuple)) and list(options) != list(LETTERS[:len(options)]):  # texts
        if len(options) > len(LETTERS):
            raise ValueError(f"options: at most 26 option texts (A-Z), got {len(options)}")
        options = dict(zip(LETTERS, options))
    if isinstance(options, dict):
        keys, texts = list(options), options
        for k, v in options.items():
            if not isinstance(v, str):
                raise ValueError(f"options: text of option {k!r} must be a str, got {type(v).__name__}")
    elif isinstance(options, (str, list, tuple)):
        keys, texts = list(options), None
    else:
        raise TypeError(f"options must be letters ('ABCD'), a dict letter -> text or a list of texts, got "
                        f"{type(options).__name__}")
    if not keys or len(set(keys)) != len(keys) or not all(isinstance(k, str) and len(k) == 1 and k in LETTERS
                                                          for k in keys):
        raise ValueError(f"options: expected distinct upper-case letters such as 'ABCD', got {keys}")
    return "".join(keys), texts


def norm(text):
    # compare option texts ignoring case, spacing and a trailing period
    return " ".join(text.split()).rstrip(". ").casefold()


def has_phrase(hay, needle):
    # needle occurs in hay as whole words
    i = hay.find(needle)
    while i >= 0:
        j = i + len(needle)
        if (i == 0 or not hay[i - 1].isalnum()) and (j == len(hay) or not hay[j].isalnum()):
            return True
        i = hay.find(needle, i + 1)
    return False


def unwrap(s):
    # \boxed{C}, then quotes, backticks and italics around the whole answer: 'C', `C`, *C*, "Ceftriaxone"
    m = WRAP_RE.fullmatch(s)
    s = m.group(1).strip() if m else s
    while len(s) > 2 and QUOTES.get(s[0]) == s[-1]:
        s = s[1:-1].strip()
    return s


def other_choices(text, letter, letters):
    """Offered letters other than `letter` that the text after "C." names as a choice (letter-only options)."""
    others = []
    for m in TOKEN_RE.finditer(text):
        o = m.group()
        if o not in letters or o == letter or o in others:
            continue
        after = WORD_AFTER_RE.match(text, m.end())
        after = after.group(1) if after else None
        if text.startswith("-", m.end()) or (after and not after.isdigit() and after not in CHOICE_AFTER):
            continue  # "B-cell lymphoma", "E. coli", "B pertussis", "A patient": a term
        before = WORD_BEFORE_RE.search(text, max(0, m.start() - 40), m.start())
        chosen = before is not None and before.group(1).lower() in CHOICE_WORDS  # "or B", "not D"
        if before and not chosen and not text.startswith(")", m.end()):
            continue  # "Hepatitis B", "vitamin A": part of the option's wording ("Ceftriaxone D)" is a label)
        if o == "A" and after and after.isdigit() and not chosen:
            continue  # "- A 45-year-old man ...": the article
        others.append(o)
    return others


def justification_problem(text, letter, letters, texts):
    """None when `text` is option `letter`'s text followed by a justification ("Ceftriaxone, because it covers
    N. gonorrhoeae") that names no other option, by letter or by text; else why not."""
    def start(k):  # how much of `text` option k's text covers from the start, or 0
        m = re.match(r"\s+".join(map(re.escape, texts[k].split())), text, re.IGNORECASE)
        return m.end() if m and texts[k].strip() else 0

    end = start(letter)
    if not end or not JUSTIFY_RE.match(text, end):
        return f"text after {letter} is not the text of option {letter}"
    longer = [k for k in texts if k != letter and start(k) > end]  # "The foramen ovale, rotundum and spinosum"
    if longer:  # is option B's text, though it begins with A's
        return f"text after {letter} is the text of option {longer[0]}"
    rest = text[end:]
    named = other_choices(rest, letter, letters) + [k for k, v in texts.items()
                                                    if k != letter and norm(v) and has_phrase(norm(rest), norm(v))]
    if named:
        named = [letter] + list(dict.fromkeys(named))
        return f"answer names {len(named)} options: {', '.join(named)}"
    return None


def letter_choice(s, rest, letters, texts):
    """The letter named by a letter form, or (None, reason); reason is "" when s is no letter form."""
    m = LOWER_RE.fullmatch(s) or (LOWER_RE.fullmatch(rest) if rest != s else None)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        return (letter, "") if letter in letters else (None, f"letter {letter} is not offered ({letters})")
    m = LETTER_RE.fullmatch(rest)
    if not m:
        return None, ""
    letter, text = m["p"] or m["b"] or m["l"], m["text"]
    if letter not in letters:
        return None, f"letter {letter} is not offered ({letters})"
    if text is None:
        return letter, ""
    if texts is not None:
        inner = PAREN_RE.fullmatch(text)
        if norm(text) == norm(texts[letter]) or (inner and norm(inner.group(1)) == norm(texts[letter])):
            return letter, ""
        reason = justification_problem(text, letter, letters, texts)
        return (letter, "") if reason is None else (None, reason)
    others = other_choices(text, letter, letters)
    if others:
        named = [letter] + others
        return None, f"answer names {len(named)} options: {', '.join(named)}"
    return letter, ""


def diagnose(s, letters):
    # why an answer that is neither a letter form nor an option's text fails
    if len(s) > 1 and all(c in letters for c in s):
        named = list(dict.fromkeys(s))  # "AB"
    else:
        named = list(dict.fromkeys(
            m.group() for m in TOKEN_RE.finditer(s) if m.group() in letters and not ARTICLE_RE.match(s, m.start())))
    if len(named) >= 2:
        return f"answer names {len(named)} options: {', '.join(named)}"
    if not named:
        return "answer names no offered option"
    return f"answer mentions {named[0]} but is not a recognised answer form"


def without_is_answer(text):
    """"C is the answer" -> "C"; "" when the text does not end so."""
    m = IS_ANSWER_RE.search(text, max(0, len(text) - IS_ANSWER_TAIL))
    return text[:m.start()].strip() if m else ""


def resolve(content, letters, texts):
    """(letter, "") for the one option the answer names, else (None, reason)."""
    raw = content.replace("**", "").strip()  # bold carries no meaning: **C**, **Answer:** C
    s = unwrap(raw)
    if not s:
        return None, "empty answer"
    after_raw = s[PREFIX_RE.match(s).end():]
    after = unwrap(after_raw)
    cut = without_is_answer(after)
    # the answer as written, then without an "is the answer" tail (an option's own text may end "... is true.")
    forms = [after, unwrap(cut)] if cut else [after]
    why = ""
    for rest in forms:
        letter, reason = letter_choice(s, rest, letters, texts)
        if letter:
            return letter, ""
        why = why or reason
    if texts is not None:  # (an option's text may itself be quoted: compare the forms before unwrapping too)
        candidates = {norm(x) for x in (raw, s, after_raw, cut, *forms)}
        hits = [k for k, v in texts.items() if norm(v) and norm(v) in candidates]
        if len(hits) == 1:
            return hits[0], ""
        if hits:
            return None, f"answer matches the text of {len(hits)} options: {', '.join(hits)}"
    return None, why or diagnose(s, letters)


def states_answer(think, pred, letters, texts):
    # the think block already gives the final choice away
    if resolve(think, letters, texts)[0] == pred:  # "C." or "The answer is C." alone
        return True
    for m in ANSWER_IS_RE.finditer(think):
        if m.group(1) == pred and not ARTICLE_RE.match(think, m.start(1)):
            return True
    m = END_LETTER_RE.search(think.rstrip()[-16:])
    if m and m.group(1) == pred:
        return True
    m = LEAD_LETTER_RE.match(think)
    if m and m.group(1) == pred and len(think.split()) <= DIRECT_WORDS:
        return True
    return texts is not None and bool(norm(texts[pred])) and has_phrase(norm(think), norm(texts[pred]))


def structure_problem(names):
    # names: the tags in order of appearance
    if names == TAGS:
        return ""
    for tag in TAGS:
        n = names.count(tag)
        if n > 1:
            return f"{n} {tag} tags"
        if n == 0:
            return f"no {tag} tag" if tag[1] != "/" else f"<{tag[2:]} is not closed"
    if names.index("<answer>") < names.index("<think>"):
        return "<answer> before <think>"
    return "tags nested or out of order"


def check(response, letters, texts, strict, min_think_words):
    """Score the reply as if it were wrong: reward -1.0 or 0.0; score() settles the gold."""
    tags = list(TAG_RE.finditer(response))
    i = response.find("<think>")
    before = response[:i] if i >= 0 else ""
    j = response.find("</think>", i) if i >= 0 else -1
    think = response[i + len("<think>"):j] if j >= 0 else ""
    k = response.rfind("</answer>")
    trailing = k >= 0 and not TAIL_RE.fullmatch(response, k + len("</answer>"))
    words_before, think_words = len(before.split()), len(think.split())

    def fail(reason):
        return Score(-1.0, False, None, False, reason, words_before, think_words, False, trailing)

    problem = structure_problem([t.group() for t in tags])
    if problem:
        return fail(problem)
    if response[tags[1].end():tags[2].start()].strip():
        return fail("text between </think> and <answer>")
    if trailing:
        return fail("text after </answer>")
    if strict and before.strip():
        return fail(f"{words_before} words before <think> (strict)")
    if think_words < min_think_words:
        return fail(f"<think> has {think_words} words, fewer than {min_think_words}")
    pred, reason = resolve(response[tags[2].end():tags[3].start()], letters, texts)
    if pred is None:
        return fail(reason)
    return Score(0.0, True, pred, False, "", words_before, think_words,
                 states_answer(think, pred, letters, texts), False)


def score(response: str, answer: str, options=OPTIONS_DEFAULT, strict: bool = False,
          min_think_words: int = 0) -> Score:
    """Score one reply against the gold letter `answer`; options: 'ABCD', ['A', 'B', 'C', 'D'], {'A': text, ...}
    or [text, text, ...] (lettered A, B, ... in order)."""
    letters, texts = parse_options(options)
    if not (isinstance(answer, str) and len(answer) == 1 and answer in letters):
        raise ValueError(f"gold answer {answer!r} is not one of the offered letters {letters}")
    s = check(response, letters, texts, strict, min_think_words)
    if s.pred == answer:
        return replace(s, reward=1.0, correct=True)
    return s


def pattern(response: str, options="ABCDEFGHIJ") -> str:
    """Label a reply with one of PATTERNS, under the default format rule, checked in this order: format_failure,
    outside_reasoning, direct_answer, verbose, else concise. Without the item's options, any of ten letters
    (MMLU-Pro's most) counts as an answer: the label is about behaviour, not the gold."""
    letters, texts = parse_options(options)
    s = check(response, letters, texts, strict=False, min_think_words=0)
    if not s.format_ok:
        return "format_failure"
    if s.words_before_think >= OUTSIDE_WORDS:
        return "outside_reasoning"
    if s.think_words <= DIRECT_WORDS and (s.think_states_answer or s.think_words == 0):
        return "direct_answer"
    if s.think_words >= VERBOSE_WORDS:
        return "verbose"
    return "concise"


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit('usage: python verifier.py "<think>...</think><answer>C</answer>" GOLD [LETTERS]')
    opts = sys.argv[3] if len(sys.argv) == 4 else OPTIONS_DEFAULT
    print(score(sys.argv[1], sys.argv[2], opts))
    print("pattern:", pattern(sys.argv[1], opts))
