r"""The reward rule: score one model reply to a multiple-choice question.

This is the verifiable reward of Med-RLVR (Zhang et al. 2025): -1 if the reply breaks the
format, 1 if its answer is the gold option, 0 if it is another option. It is the only signal
PPO sees, and a reply form it pays wrongly is one that RL will find and grow. So the answer is
read by a closed grammar: a short list of forms that each name exactly one option. Whatever is
not one of them (two options, a hedge, a justification, a sentence) is a format failure, so no
hedge is paid by construction, and every plain single choice is.

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

Answer (the text inside <answer>...</answer>)
  1. Normalise (normalise(); option texts are normalised the same way): Unicode NFKC (full-width
     "Ｃ" is "C"); Cyrillic and Greek letters drawn like a Latin letter are read as that letter
     (LOOKALIKES: Cyrillic "С" and Greek "Ϲ" are "C"; letters of other scripts are kept, and so
     match no letter); every dash and minus sign is "-"; \boxed{..}, \text{..}, \textbf{..},
     \mathrm{..}, \mathbf{..} are unwrapped; markdown emphasis and code (* _ `), $, \( \) \[ \]
     and quotes are dropped; whitespace is collapsed, and dropped just inside brackets ("( C )");
     one trailing period is dropped; case is folded.
  2. The whole answer must then be one of these forms (GRAMMAR), optionally after one lead-in and
     before one tail (below). {L} is an offered letter, {T} that option's own text: the whole
     text, normalised (its final period may stay: "Reject it. (B)"), never a text that merely
     contains it. Examples are for the options A Insulin glargine, B Glipizide, C Metformin,
     D Sitagliptin (EXAMPLE_OPTIONS): each "pass" is option C, each "fail" is a format failure
     whatever the gold.

  letter             {L}   ({L})   [{L}]   {L})   {L}:
                     the letter alone
      pass: C   C.   (C)   (c).   [C]   C)   C:   **C**   \boxed{\text{C}}   $\boxed{C}$   `C`   Ｃ
            С   The answer is (c).   Answer: C   **Final answer:** C   Option C
            So the correct answer is C   C is the answer
      fail: CD   C D   C/D   C or D   C, D   (C) or (D)   C?   C.D   C D maybe
            I think the answer is C   AnswerC   E   The answer is C or D
  letter_text        {L}. {T}   {L}) {T}   ({L}) {T}   [{L}] {T}   {L}: {T}   {L} - {T}   {L}, {T}   {L} {T}
                     the letter, then that option's own text
      pass: C. Metformin   C) Metformin   (C) Metformin   C: metformin.   C - Metformin
            C – Metformin   C\nMetformin   The correct answer is C. Metformin
            The answer is C, Metformin   **C. Metformin**   Option C: Metformin
      fail: C. Metformin, D maybe   C. Metformin, or d   C. Metformin; next best D
            C. Metformin, because it is first-line   C. Glipizide   D. Metformin   C. Metformin XR
            C. Metform   C. Metformin\n\nIf she cannot tolerate it, switch to D.
  letter_paren_text  {L} ({T})
                     the letter, then that option's own text in brackets
      pass: C (Metformin)   The answer is C (Metformin).
      fail: C (Glipizide)   C (or D)   C (D)   C (Metformin or sitagliptin)
  text               {T}
                     that option's own text alone
      pass: Metformin   metformin.   **Metformin**   The answer is Metformin
            Metformin is the best option
      fail: Metformin or glipizide   Metformin and sitagliptin   Metformin, glipizide   Metformin XR
            Metform   Metformin, maybe sitagliptin
  text_letter        {T} ({L})
                     that option's own text, then its letter in brackets
      pass: Metformin (C)   metformin (c).   The answer is Metformin (C)
      fail: Metformin (D)   Glipizide (C)   Metformin (C or D)   Metformin (C), D maybe
  lead-in   [so|therefore|thus|hence][,] [the|my] [final|correct|best|right|most likely|most appropriate|single best]
            answer|answer choice|option|choice|diagnosis [is|would be|should be] [:|-] [option|choice]
  tail      is|would be|should be [the] final|correct|best|right|most likely|most appropriate|single best
            [answer|answer choice|option|choice|diagnosis],
            or is|would be|should be [the] answer|answer choice|option|choice|diagnosis

  Decisions, all by the rule that only a closed form is paid:
  - There is no justification form: "C. Metformin, because it is first-line" is a format
    failure. A justification is open text, and open text can name a second option.
  - With letter-only options ("ABCD"), the forms with {T} cannot be checked and are refused.
  - A letter form wins over a text form (the prompt asks for the letter): "A" is option A even
    where option B's text is "A"; "E" is option D's text when only A-D are offered and D is "E".
  - A text that two options share, after normalisation, names neither; their letters still do.
  - An answer that reads as two options in two forms (C's text is "D" and D's is "C": "C (D)")
    is a format failure.
  - Only the lead-ins above: "I think the answer is C" or "It is C" is a format failure (and
    "I" is a letter when ten options are offered).

Reward: -1.0 if the format fails, else 1.0 if the answer's letter is the gold one, else 0.0.

pattern() labels a reply for the paper's training-dynamics analysis: format_failure,
outside_reasoning, direct_answer, concise or verbose (see the thresholds below). A think of at
most DIRECT_WORDS words that names an offered option, by a letter standing alone or by an
option's text, however it is phrased, is a direct answer.

Run it on one reply (python verifier.py --grammar prints the grammar table above):
    python verifier.py "<think>Urate crystals.</think><answer>B</answer>" B
"""
import re
import sys
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache

OPTIONS_DEFAULT = "ABCD"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATTERNS = ("format_failure", "verbose", "concise", "direct_answer", "outside_reasoning")

# pattern() thresholds, in whitespace-separated words.
# A harmless preamble ("Let me think step by step.") is under 10 words; 10 or more words before
# <think> is at least a sentence of content, i.e. reasoning moved outside the think block.
OUTSIDE_WORDS = 10
# Eight words cannot weigh the findings of a clinical vignette; a think this short that names an
# option ("The answer is B.", "It is C, not D.") or is empty only gives the answer away.
DIRECT_WORDS = 8
# A MedQA vignette alone has a median of ~110 words; reasoning that walks through its findings
# and the options runs past 100 words, while a compact 2-4 sentence chain stays under it.
VERBOSE_WORDS = 100

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
TAG_RE = re.compile(r"</?(?:think|answer)>")
END_RE = re.compile(r"(?:\s|<\|endoftext\|>|<\|im_end\|>|</s>|<eos>|<\|eot_id\|>|<\|end_of_text\|>)*")

# -----------------------------------------------------------------------------
# normalisation

# Cyrillic and Greek letters drawn like a Latin one (in that order), and every dash and minus sign (as "-")
LOOKALIKES = str.maketrans(
    "АВСЕНІЈКМОРЅТХУаеорсуіјѕһԁԛԝ" "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹοϲ" "\u2010\u2011\u2012\u2013\u2014\u2015\u2212",
    "ABCEHIJKMOPSTXYaeopcyijshdqw" "ABEZHIKMNOPTYXCoc" "-------")
LOOKALIKE_RE = re.compile("[" + "".join(map(chr, LOOKALIKES)) + "]")
LATEX_RE = re.compile(r"\\(?:boxed|text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}")
LATEX_DEPTH = 3  # \boxed{\text{C}} is two deep; a deeper nest is no plain answer (and bounds the work)
MARKUP_RE = re.compile(r"\\[()\[\]]|[*_`$\"'\u201c\u201d\u2018\u2019]")


def fold(text):
    # NFKC, then look-alike letters and dashes (ASCII text is its own fold; translate() is slow, so only if needed)
    if text.isascii():
        return text
    s = unicodedata.normalize("NFKC", text)
    return s.translate(LOOKALIKES) if LOOKALIKE_RE.search(s) else s


def normalise(text):
    """The text as the grammar reads it (step 1 of the module docstring)."""
    s = fold(text)
    for _ in range(LATEX_DEPTH):
        s, n = LATEX_RE.subn(r"\1", s)
        if not n:
            break
    s = " ".join(MARKUP_RE.sub("", s).split())
    s = s.replace("( ", "(").replace(" )", ")").replace("[ ", "[").replace(" ]", "]")  # "( C )" is "(C)"
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s.casefold()


# -----------------------------------------------------------------------------
# the answer grammar

@dataclass(frozen=True)
class Form:
    name: str
    shapes: tuple  # the normalised answer: {L} an offered letter, {T} that option's own text
    meaning: str
    passes: tuple  # answers that are option C of EXAMPLE_OPTIONS
    fails: tuple  # near misses: format failures whatever the gold


EXAMPLE_OPTIONS = {"A": "Insulin glargine", "B": "Glipizide", "C": "Metformin", "D": "Sitagliptin"}
GRAMMAR = (
    Form("letter", ("{L}", "({L})", "[{L}]", "{L})", "{L}:"), "the letter alone",
         ("C", "C.", "(C)", "(c).", "[C]", "C)", "C:", "**C**", r"\boxed{\text{C}}", r"$\boxed{C}$", "`C`",
          "\uff23", "\u0421", "The answer is (c).", "Answer: C", "**Final answer:** C", "Option C",
          "So the correct answer is C", "C is the answer"),
         ("CD", "C D", "C/D", "C or D", "C, D", "(C) or (D)", "C?", "C.D", "C D maybe", "I think the answer is C",
          "AnswerC", "E", "The answer is C or D")),
    Form("letter_text", ("{L}. {T}", "{L}) {T}", "({L}) {T}", "[{L}] {T}", "{L}: {T}", "{L} - {T}", "{L}, {T}",
                         "{L} {T}"),
         "the letter, then that option's own text",
         ("C. Metformin", "C) Metformin", "(C) Metformin", "C: metformin.", "C - Metformin", "C \u2013 Metformin",
          "C\nMetformin", "The correct answer is C. Metformin", "The answer is C, Metformin", "**C. Metformin**",
          "Option C: Metformin"),
         ("C. Metformin, D maybe", "C. Metformin, or d", "C. Metformin; next best D",
          "C. Metformin, because it is first-line", "C. Glipizide", "D. Metformin", "C. Metformin XR", "C. Metform",
          "C. Metformin\n\nIf she cannot tolerate it, switch to D.")),
    Form("letter_paren_text", ("{L} ({T})",), "the letter, then that option's own text in brackets",
         ("C (Metformin)", "The answer is C (Metformin)."),
         ("C (Glipizide)", "C (or D)", "C (D)", "C (Metformin or sitagliptin)")),
    Form("text", ("{T}",), "that option's own text alone",
         ("Metformin", "metformin.", "**Metformin**", "The answer is Metformin", "Metformin is the best option"),
         ("Metformin or glipizide", "Metformin and sitagliptin", "Metformin, glipizide", "Metformin XR", "Metform",
          "Metformin, maybe sitagliptin")),
    Form("text_letter", ("{T} ({L})",), "that option's own text, then its letter in brackets",
         ("Metformin (C)", "metformin (c).", "The answer is Metformin (C)"),
         ("Metformin (D)", "Glipizide (C)", "Metformin (C or D)", "Metformin (C), D maybe")),
)
# the words of the one lead-in and the one tail, in this order ("So, the correct answer is: option C", "C is correct")
OPENERS = ("so", "therefore", "thus", "hence")
DETERMINERS = ("the", "my")
ADJECTIVES = ("final", "correct", "best", "right", "most likely", "most appropriate", "single best")
HEADS = ("answer", "answer choice", "option", "choice", "diagnosis")
VERBS = ("is", "would be", "should be")


def any_of(words):
    return "(?:" + "|".join(map(re.escape, words)) + ")"


LEAD_RE = re.compile(rf"(?:{any_of(OPENERS)},? )?(?:{any_of(DETERMINERS)} )?(?:{any_of(ADJECTIVES)} )?"
                     rf"{any_of(HEADS)}(?: {any_of(VERBS)})?(?::| -)?(?: (?:option|choice))?")
LEAD_START_RE = re.compile(any_of(OPENERS + DETERMINERS + ADJECTIVES + HEADS) + r"\b")
LEAD_MAX = 80  # characters: longer than any lead-in
TAIL_RE = re.compile(rf" {any_of(VERBS)} (?:the )?(?:{any_of(ADJECTIVES)}(?: {any_of(HEADS)})?|{any_of(HEADS)})\Z")
TAIL_MAX = 60  # characters: longer than any tail
LETTER_FORM_MAX = LEAD_MAX + len(" [c]: ") + TAIL_MAX  # characters: longer than any form without a text


def shape_re(shape):
    # "{L}. {T}" -> a regex with the groups L and T over the normalised answer
    return re.compile(re.escape(shape).replace(r"\{L\}", "(?P<L>[a-z])").replace(r"\{T\}", "(?P<T>.+)"), re.DOTALL)


SHAPES = [shape_re(shape) for form in GRAMMAR for shape in form.shapes]


def grammar_table():
    """GRAMMAR, the lead-in and the tail as the module docstring shows them (a test holds the two equal)."""
    def wrap(label, items):  # "      pass: C   C.   (C) ...", at most 100 characters a line
        lines = [f"      {label}:"]
        for item in (x.replace("\n", r"\n") for x in items):
            if len(lines[-1]) + 3 + len(item) > 100:
                lines.append(" " * 11)
            lines[-1] += ("   " if len(lines[-1]) > 12 else " ") + item
        return lines

    def one_of(words):
        return "|".join(words)

    rows = []
    for f in GRAMMAR:
        rows += [f"  {f.name:<18} {'   '.join(f.shapes)}", f"  {'':<18} {f.meaning}"]
        rows += wrap("pass", f.passes) + wrap("fail", f.fails)
    return "\n".join(rows + [
        f"  lead-in   [{one_of(OPENERS)}][,] [{one_of(DETERMINERS)}] [{one_of(ADJECTIVES)}]",
        f"            {one_of(HEADS)} [{one_of(VERBS)}] [:|-] [option|choice]",
        f"  tail      {one_of(VERBS)} [the] {one_of(ADJECTIVES)}",
        f"            [{one_of(HEADS)}],",
        f"            or {one_of(VERBS)} [the] {one_of(HEADS)}"])


# -----------------------------------------------------------------------------
# scoring

@dataclass(frozen=True)
class Score:
    reward: float  # -1.0, 0.0 or 1.0
    format_ok: bool
    pred: str | None  # the letter of the one option the answer names, or None
    correct: bool
    reason: str  # "" when format_ok, else why not
    words_before_think: int  # hacking signal: words before <think>
    think_words: int  # words inside <think>...</think>
    think_states_answer: bool  # the think block names the chosen option (by its letter or its text)
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


def cores(s):
    """The normalised answer without one lead-in and without one tail, in every way it has them."""
    heads = [s]
    if LEAD_START_RE.match(s):
        for i, c in enumerate(s[:LEAD_MAX]):
            if c == " " and LEAD_RE.fullmatch(s, 0, i):  # "the answer is c"
                heads.append(s[i + 1:])
            elif c == ":" and LEAD_RE.fullmatch(s, 0, i + 1):  # "answer:c"
                heads.append(s[i + 1:].lstrip())
    for head in dict.fromkeys(heads):
        yield head
        m = TAIL_RE.search(head, max(0, len(head) - TAIL_MAX))
        if m:
            yield head[:m.start()]


def read(s, letters, texts):
    """The letters of the options that the normalised answer s names in a form of the grammar: (by a form with
    a letter, by a form with a text only). texts: letter -> normalised text ({} for letter-only options)."""
    by_letter, by_text = set(), set()
    for core in cores(s):
        for rx in SHAPES:
            m = rx.fullmatch(core)
            if not m:
                continue
            letter, text = m.groupdict().get("L"), m.groupdict().get("T")
            if letter is None:
                by_text.update(k for k, v in texts.items() if same_text(text, v))
            elif letter.upper() in letters and (text is None or same_text(text, texts.get(letter.upper()))):
                by_letter.add(letter.upper())
    return by_letter, by_text


def same_text(text, option):
    # the option's own final period may stay before a tail or "(C)": "Reject it. (B)"
    return option is not None and (text == option or (text.endswith(".") and text[:-1].rstrip() == option))


def option_texts(texts):
    # letter -> normalised text; letter-only options have none, and an empty text ("", "**") is none to match
    return {} if texts is None else dict(normalised_options(tuple(texts.items())))


@lru_cache(maxsize=4096)  # an item's options come back with every sample of it
def normalised_options(items):
    return tuple((k, t) for k, t in ((k, normalise(v)) for k, v in items) if t)


# in free text: a capital letter standing alone ("B-cell" and "vitamin B12" hold none); "A" and "I" before a
# lower-case word are the article and the pronoun ("A patient", "I think"), unless the word makes them a choice
LETTER_WORD_RE = re.compile(r"([A-Z])(?<![A-Za-z0-9-][A-Z])(?![A-Za-z0-9-])")  # the letter first: 3x faster
WORD_NOT_LETTER_RE = re.compile(r"[AI] +(?!(?:is|or|and|nor|was|would|could|might|seems)\b)[a-z]")
LOWER_PAREN_RE = re.compile(r"\(([a-z])\)")


def named(text, low, letters, texts):
    """The offered options a free text names: a letter standing alone (not the article "A" or the pronoun "I"
    before a lower-case word), "(c)", or an option's own text as whole words. low: normalise(text); texts:
    normalised."""
    s = fold(text)
    found = {m.group(1) for m in LETTER_WORD_RE.finditer(s) if not WORD_NOT_LETTER_RE.match(s, m.start(1))}
    found |= {m.group(1).upper() for m in LOWER_PAREN_RE.finditer(s)}
    found |= {k for k, v in texts.items() if has_phrase(low, v)}
    return {k for k in found if k in letters}


def has_phrase(hay, needle):
    # needle occurs in hay as whole words
    i = hay.find(needle)
    while i >= 0:
        j = i + len(needle)
        if (i == 0 or not hay[i - 1].isalnum()) and (j == len(hay) or not hay[j].isalnum()):
            return True
        i = hay.find(needle, i + 1)
    return False


def diagnose(content, s, letters, texts):
    # why an answer that names no single option in a form of the grammar fails
    if re.fullmatch(r"[a-z]{2,}", s) and all(c.upper() in letters for c in s):
        names = sorted(set(s.upper()))  # "AB"
    else:
        names = sorted(named(content, s, letters, texts))
    if len(names) >= 2:
        return f"answer names {len(names)} options: {', '.join(names)}"
    for core in cores(s):
        m = re.fullmatch(r"[(\[]?([a-z])[)\]:]?", core)
        if m and m.group(1).upper() not in letters:
            return f"letter {m.group(1).upper()} is not offered ({letters})"
    if names:
        return f"answer names {names[0]} but is no form of the answer grammar"
    return "answer names no offered option"


def choices(s, letters, texts):
    """The options the normalised answer s names in a form of the grammar; a letter form wins over a text form."""
    by_letter, by_text = read(s, letters, texts)
    return by_letter or by_text


def resolve(content, letters, texts):
    """(letter, "") for the one option the answer names in a form of the grammar, else (None, reason)."""
    s = normalise(content)
    if not s:
        return None, "empty answer"
    chosen = choices(s, letters, texts)
    if len(chosen) == 1:
        return chosen.pop(), ""
    if chosen:
        return None, f"answer reads as {len(chosen)} options: {', '.join(sorted(chosen))}"
    return None, diagnose(content, s, letters, texts)


def mentioned(think, letters, texts):
    """The offered options a think block names: in free text (named()), or as a whole in a form of the grammar."""
    low = normalise(think)
    found = named(think, low, letters, texts)
    # named() finds every option text; what it can miss is a letter form ("c", "the answer is c"), which is short
    return found | choices(low, letters, texts) if len(low) <= LETTER_FORM_MAX else found


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
    """Score the reply as if it were wrong: reward -1.0 or 0.0; score() settles the gold. texts: normalised."""
    tags = list(TAG_RE.finditer(response))
    i = response.find("<think>")
    before = response[:i] if i >= 0 else ""
    j = response.find("</think>", i) if i >= 0 else -1
    think = response[i + len("<think>"):j] if j >= 0 else ""
    k = response.rfind("</answer>")
    trailing = k >= 0 and not END_RE.fullmatch(response, k + len("</answer>"))
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
    return Score(0.0, True, pred, False, "", words_before, think_words, pred in mentioned(think, letters, texts),
                 False)


def score(response: str, answer: str, options=OPTIONS_DEFAULT, strict: bool = False,
          min_think_words: int = 0) -> Score:
    """Score one reply against the gold letter `answer`; options: 'ABCD', ['A', 'B', 'C', 'D'], {'A': text, ...}
    or [text, text, ...] (lettered A, B, ... in order)."""
    letters, texts = parse_options(options)
    if not (isinstance(answer, str) and len(answer) == 1 and answer in letters):
        raise ValueError(f"gold answer {answer!r} is not one of the offered letters {letters}")
    s = check(response, letters, option_texts(texts), strict, min_think_words)
    if s.pred == answer:
        return replace(s, reward=1.0, correct=True)
    return s


def pattern(response: str, options="ABCDEFGHIJ") -> str:
    """Label a reply with one of PATTERNS, under the default format rule, checked in this order: format_failure,
    outside_reasoning, direct_answer (a think of at most DIRECT_WORDS words that is empty or names any offered
    option, by letter or text, however phrased), verbose, else concise. Without the item's options, any of ten
    letters (MMLU-Pro's most) counts as an option: the label is about behaviour, not the gold."""
    letters, texts = parse_options(options)
    texts = option_texts(texts)
    s = check(response, letters, texts, strict=False, min_think_words=0)
    if not s.format_ok:
        return "format_failure"
    if s.words_before_think >= OUTSIDE_WORDS:
        return "outside_reasoning"
    if s.think_words <= DIRECT_WORDS:
        think = response[response.find("<think>") + len("<think>"):response.find("</think>")]
        if s.think_words == 0 or mentioned(think, letters, texts):
            return "direct_answer"
    if s.think_words >= VERBOSE_WORDS:
        return "verbose"
    return "concise"


if __name__ == "__main__":
    if sys.argv[1:] == ["--grammar"]:
        print(grammar_table())
        sys.exit()
    if len(sys.argv) not in (3, 4):
        sys.exit('usage: python verifier.py "<think>...</think><answer>C</answer>" GOLD [LETTERS]\n'
                 '       python verifier.py --grammar')
    opts = sys.argv[3] if len(sys.argv) == 4 else OPTIONS_DEFAULT
    print(score(sys.argv[1], sys.argv[2], opts))
    print("pattern:", pattern(sys.argv[1], opts))
