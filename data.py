"""
Data for med-rlvr: multiple-choice QA items, loaders for the stored formats, prompt templates, tokenising,
sharding, and a synthetic drug-disease task (with its tiny tokenizer) for the CPU demo.

Every loader returns a list of `Item`: question, ordered options {"A": text, "B": text, ...}, gold letter,
an id and a source (the subgroup used for per-source accuracy). Formats (see ../shared/data/SOURCES.md):

  medqa      jsonl  question, options {A..}, answer_idx, meta_info            (jind11/MedQA)
  mmlu_pro   jsonl  question_id, question, options [3-10], answer and/or answer_index, src
  medmcqa    jsonl  question, choices ["A. text", ...], answer (0-based int)    (as in ../shared/data); the same
                    without the "A. " prefixes is Hugging Face's MMLU (cais/mmlu; its subject is the source); or
                    MedMCQA as its authors released it: id, question, opa..opd, subject_name, cop (counted from 1;
                    from 0 in the Hugging Face copy: a file's cop values must hold a 4 or a 0 to tell which)
  mmlu_csv   csv    no header: question, A, B, C, D, answer letter; subject from the file name (anatomy_test.csv)
  medagents  jsonl  realidx, question, options {A..}, answer_idx, subject
  pubmedqa   json   one object PMID -> {QUESTION, CONTEXTS, final_decision}; options A=yes B=no C=maybe and the
                    question text is the abstract's CONTEXTS joined by newlines, then a newline, then QUESTION;
                    or Hugging Face's rows (qiaojin/PubMedQA as jsonl): pubid, question, context.contexts,
                    final_decision
  generic    jsonl  your own data, one object per line:
                      {"question": "...", "options": {"A": "...", "B": "..."}, "answer": "B",
                       "id": "q17", "source": "cardiology"}
                    options: an object letter -> text (letters A, B, C, ... consecutive) or a list of texts
                    (lettered A, B, ... in order); answer: the gold upper-case letter (never an index); id and
                    source are optional (default "<file stem>:<line>" and the file stem). 2 to 26 options.

Files are UTF-8 (a leading BOM is fine); jsonl is JSON Lines, one object per line, never a JSON array. Bad rows raise
DataError "<file>:<line>: <field>: <what was expected>", for PubMedQA "<file>: PMID <pmid>: <field>: ..." (skip_bad=True
skips them instead); a key repeated within one object and an id repeated within one file are bad rows too.

Templates: base (User/Assistant text for base models), chat (Qwen chat markup), direct (answer letter only,
empty reasoning pre-filled) and cot (step-by-step reasoning pre-filled); see render() and response_prefix().

Run:  python data.py stats ../shared/data/medqa_usmle_4opt/phrases_no_exclude_test.jsonl --template base
"""

import argparse
import collections
import csv
import dataclasses
import functools
import io
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FORMATS = ("medqa", "mmlu_pro", "medmcqa", "mmlu_csv", "medagents", "pubmedqa", "generic")
TEMPLATES = ("base", "chat", "direct", "cot")


@dataclass(frozen=True)
class Item:
    id: str                  # from the file (question_id, realidx, PMID) or "<file stem>:<line>"
    question: str
    options: dict[str, str]  # ordered letter -> text, letters "A", "B", ... consecutive
    answer: str              # gold letter, a key of options
    source: str              # subgroup for per-source breakdowns (MedQA step, MMLU subject, ...)


class DataError(ValueError):
    """A bad record; the message is always '<path>:<line>: <field>: <what was expected>' ('<path>: PMID <pmid>: ...'
    for PubMedQA, whose records have no line of their own)."""


# -----------------------------------------------------------------------------
# row validation, shared by all formats

def fail(where, field, what):
    raise DataError(f"{where}: {field}: {what}")


def get(rec, key, kind, where):
    # kind is a type or a tuple of types; bool is an int in Python, so it is refused explicitly
    if key not in rec:
        fail(where, key, "missing")
    value = rec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        fail(where, key, f"expected {names}, got {type(value).__name__}")
    return value


def text(rec, key, where):
    value = get(rec, key, str, where)
    if not value.strip():
        fail(where, key, "expected non-empty text")
    return value


def option_texts(texts, field, where):
    """Validate a sequence of option texts and letter them A, B, ..."""
    if not 2 <= len(texts) <= len(LETTERS):
        fail(where, field, f"expected 2 to {len(LETTERS)} options, got {len(texts)}")
    for letter, t in zip(LETTERS, texts):
        if not isinstance(t, str):
            fail(where, f"{field}.{letter}", f"expected a string, got {type(t).__name__}")
        if not t.strip():
            fail(where, f"{field}.{letter}", "expected non-empty option text")
    return dict(zip(LETTERS, texts))


def option_dict(rec, key, where):
    options = get(rec, key, dict, where)
    letters = LETTERS[:len(options)]
    if sorted(options) != list(letters):
        fail(where, key, f"expected keys {', '.join(letters)} (consecutive letters from A), "
                         f"got {', '.join(map(str, options))}")
    return option_texts([options[k] for k in letters], key, where)


def gold_letter(rec, key, options, where):
    letter = get(rec, key, str, where)
    if letter not in options:
        fail(where, key, f"{letter!r} not among options A-{LETTERS[len(options) - 1]}")
    return letter


def check_answer_text(rec, options, letter, where):
    # medqa/medagents also store the gold option's text; a mismatch means the row is corrupt
    if "answer" in rec and rec["answer"] != options[letter]:
        fail(where, "answer", f"{rec['answer']!r} is not the text of option {letter} ({options[letter]!r})")


# -----------------------------------------------------------------------------
# one parser per format: (record, path, line) -> Item; line is the PMID for pubmedqa

def parse_medqa(rec, path, line):
    where = f"{path}:{line}"
    question = text(rec, "question", where)
    options = option_dict(rec, "options", where)
    answer = gold_letter(rec, "answer_idx", options, where)
    check_answer_text(rec, options, answer, where)
    source = text(rec, "meta_info", where)
    return Item(f"{path.stem}:{line}", question, options, answer, source)


def parse_mmlu_pro(rec, path, line):
    where = f"{path}:{line}"
    qid = get(rec, "question_id", (int, str), where)
    question = text(rec, "question", where)
    texts = get(rec, "options", list, where)
    if not 3 <= len(texts) <= 10:  # MMLU-Pro's spec; more would also run past its answer letters A-J
        fail(where, "options", f"expected 3-10 options (MMLU-Pro), got {len(texts)}")
    options = option_texts(texts, "options", where)
    if "answer" not in rec and "answer_index" not in rec:
        fail(where, "answer", "missing (and no answer_index)")
    if "answer_index" in rec:
        index = get(rec, "answer_index", int, where)
        if not 0 <= index < len(options):
            fail(where, "answer_index", f"{index} out of range for {len(options)} options")
        answer = LETTERS[index]
        if "answer" in rec and rec["answer"] != answer:
            fail(where, "answer", f"{rec['answer']!r} disagrees with answer_index {index} ({answer})")
    else:
        answer = gold_letter(rec, "answer", options, where)
    return Item(str(qid), question, options, answer, text(rec, "src", where))


def parse_medmcqa(rec, path, line, cop_base=1):
    if "choices" not in rec and "opa" in rec and "options" not in rec:  # the layout of the authors' release
        return parse_medmcqa_release(rec, path, line, cop_base)
    where = f"{path}:{line}"
    question = text(rec, "question", where)
    choices = get(rec, "choices", list, where)
    lettered = all(isinstance(c, str) and c.startswith(f"{letter}. ") for letter, c in zip(LETTERS, choices))
    texts = [c[3:] for c in choices] if lettered else choices  # "A. text", as in ../shared/data; else plain texts
    options = option_texts(texts, "choices", where)
    index = get(rec, "answer", int, where)
    if not 0 <= index < len(options):
        fail(where, "answer", f"{index} out of range for {len(options)} options (0-based)")
    subject = rec.get("subject")  # Hugging Face's MMLU (cais/mmlu) rows have this layout too
    source = subject if isinstance(subject, str) and subject.strip() else "medmcqa"
    return Item(f"{path.stem}:{line}", question, options, LETTERS[index], source)


def parse_medmcqa_release(rec, path, line, cop_base):
    # cop counts options from 1 in the authors' files, from 0 in the Hugging Face copy (load_mcqa tells which)
    where = f"{path}:{line}"
    question = text(rec, "question", where)
    options = {letter: text(rec, key, where) for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"))}
    cop = get(rec, "cop", int, where)
    if not cop_base <= cop < cop_base + 4:
        fail(where, "cop", f"{cop} out of range {cop_base}-{cop_base + 3} (the correct option, counted from "
                           f"{cop_base} in this file; -1 marks an unlabelled test row)")
    subject = rec.get("subject_name")  # only a label for per-source breakdowns
    source = subject if isinstance(subject, str) and subject.strip() else "medmcqa"
    item_id = str(get(rec, "id", (int, str), where)) if "id" in rec else f"{path.stem}:{line}"
    return Item(item_id, question, options, "ABCD"[cop - cop_base], source)


def medmcqa_cop_base(path, content):
    """Whether the file's cop values count options from 0 (the Hugging Face copy: a 0 among them) or from 1 (the
    authors' files: a 4). A file that shows neither, or both, is refused whole, never read with every answer shifted.
    The pattern cannot match inside a JSON string, where quotes are escaped."""
    found = {int(c) for c in re.findall(r'"cop"\s*:\s*(-?[0-9]+)(?![0-9.eE])', content)}  # integers only
    if not found:
        return 1  # no row in the release layout (or no integer cop: each row will say so)
    cops = found & {0, 1, 2, 3, 4}  # -1 marks an unlabelled row; other values are each row's own error
    if found == {-1}:
        fail(f"{path}:1", "cop", "-1 on every row (unlabelled, as in MedMCQA's test split); expected answers")
    if not cops:
        return 1  # every labelled row out of range: each will say so
    if cops <= {1, 2, 3}:
        fail(f"{path}:1", "cop", f"only {sorted(cops)}: cannot tell whether cop counts options from 0 (Hugging Face's "
                                 "copy of MedMCQA) or from 1 (the authors' files); convert the file to the generic "
                                 "jsonl, with the answer as a letter")
    if {0, 4} <= cops:
        fail(f"{path}:1", "cop", "holds both 0 and 4: rows counting options from 0 (Hugging Face's copy of MedMCQA) "
                                 "and from 1 (the authors' files) are mixed; expected one or the other")
    return 0 if 0 in cops else 1


def parse_medagents(rec, path, line):
    where = f"{path}:{line}"
    realidx = get(rec, "realidx", (int, str), where)
    question = text(rec, "question", where)
    options = option_dict(rec, "options", where)
    answer = gold_letter(rec, "answer_idx", options, where)
    check_answer_text(rec, options, answer, where)
    return Item(str(realidx), question, options, answer, text(rec, "subject", where))


def parse_generic(rec, path, line):
    where = f"{path}:{line}"
    question = text(rec, "question", where)
    raw = get(rec, "options", (dict, list), where)
    options = option_dict(rec, "options", where) if isinstance(raw, dict) else option_texts(raw, "options", where)
    answer = gold_letter(rec, "answer", options, where)
    item_id = str(get(rec, "id", (int, str), where)) if "id" in rec else f"{path.stem}:{line}"
    source = text(rec, "source", where) if "source" in rec else path.stem
    return Item(item_id, question, options, answer, source)


def parse_mmlu_csv(row, path, line):
    where = f"{path}:{line}"
    if len(row) != 6:
        fail(where, "row", f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    rec = dict(zip(("question", "A", "B", "C", "D", "answer"), row))
    question = text(rec, "question", where)
    for letter in "ABCD":
        text(rec, letter, where)
    options = {letter: rec[letter] for letter in "ABCD"}
    answer = gold_letter(rec, "answer", options, where)
    subject = re.sub(r"_(dev|val|test|train)$", "", path.stem)  # anatomy_test.csv -> anatomy
    return Item(f"{path.stem}:{line}", question, options, answer, subject)


PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def parse_pubmedqa(rec, path, key):
    """key: the PMID of a record of the authors' file, or the line of a Hugging Face row (qiaojin/PubMedQA as jsonl:
    pubid, question, context.contexts, final_decision)."""
    if isinstance(key, int):
        where = f"{path}:{key}"
        if "options" in rec:  # a row of the user's own, with PubMedQA's fields kept: read it as generic
            fail(where, "options", "unexpected: PubMedQA's options are yes, no and maybe")
        pmid, question = get(rec, "pubid", (int, str), where), text(rec, "question", where)
        context, field = get(rec, "context", dict, where), "context.contexts"
        if "contexts" not in context:
            fail(where, field, "missing")
        contexts = context["contexts"]
        if not isinstance(contexts, list):
            fail(where, field, f"expected a list of strings, got {type(contexts).__name__}")
    else:
        pmid, where = key, f"{path}: PMID {key}"  # not "path:pmid", which reads as a line number
        if not isinstance(rec, dict):
            fail(where, "record", f"expected an object with QUESTION, CONTEXTS, final_decision, got "
                                  f"{type(rec).__name__}")
        question, contexts, field = text(rec, "QUESTION", where), get(rec, "CONTEXTS", list, where), "CONTEXTS"
    if not all(isinstance(c, str) for c in contexts):
        fail(where, field, "expected a list of strings")
    decision = get(rec, "final_decision", str, where)
    letter = {v: k for k, v in PUBMEDQA_OPTIONS.items()}.get(decision)
    if letter is None:
        fail(where, "final_decision", f"{decision!r} is not one of yes, no, maybe")
    return Item(str(pmid), "\n".join(contexts + [question]), dict(PUBMEDQA_OPTIONS), letter, "pubmedqa")


PARSERS = {"medqa": parse_medqa, "mmlu_pro": parse_mmlu_pro, "medmcqa": parse_medmcqa, "mmlu_csv": parse_mmlu_csv,
           "medagents": parse_medagents, "pubmedqa": parse_pubmedqa, "generic": parse_generic}


# -----------------------------------------------------------------------------
# reading files: each reader yields (line or key, thunk); calling the thunk parses one row and may raise DataError

class Pairs(list):
    """A JSON object as its (key, value) pairs (json.loads' object_pairs_hook): a dict would keep only the last of two
    equal keys, silently."""


def as_dicts(value, where, field=""):
    """Parsed JSON with every Pairs made a dict; a key repeated within one object is a DataError."""
    if isinstance(value, Pairs):
        obj = {}
        for key, v in value:
            name = f"{field}.{key}" if field else key
            if key in obj:
                fail(where, name, "appears twice in one object (JSON keys must be unique)")
            obj[key] = as_dicts(v, where, name)
        return obj
    if isinstance(value, list):
        return [as_dicts(v, where, f"{field}[{i}]") for i, v in enumerate(value)]
    return value


# json.loads and as_dicts recurse once per level of nesting
TOO_DEEP = "nested too deeply to read (Python's recursion limit); expected records nested a few levels at most"


def jsonl_rows(path, content, parse):
    def row(line, raw):
        where = f"{path}:{line}"
        try:
            rec = json.loads(raw, object_pairs_hook=Pairs)
            if not isinstance(rec, Pairs):
                fail(where, "record", f"expected a JSON object, got {type(rec).__name__}")
            rec = as_dicts(rec, where)
        except json.JSONDecodeError as e:
            fail(where, "json", f"{e.msg} (column {e.colno})")
        except RecursionError:
            fail(where, "json", TOO_DEEP)
        return parse(rec, path, line)
    # only "\n" ends a line: str.splitlines() also splits on U+2028, U+2029 and U+0085, which JSON allows raw in strings
    for line, raw in enumerate(content.split("\n"), start=1):
        if raw.strip():
            yield line, lambda line=line, raw=raw: row(line, raw)


def csv_rows(path, content, parse):
    reader = csv.reader(io.StringIO(content, newline=""))
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # only a cell over csv.field_size_limit() gets here (no strict dialect, no "\r" left)
            # raised here, not from a row's thunk, so skip_bad cannot skip it: the reader cannot resume, it would take
            # the rest of a long quoted cell for new rows
            fail(f"{path}:{start}", "row", f"{e}; expected cells of at most {csv.field_size_limit()} characters "
                                           "(the file is not read past this row)")
        if row:  # a quoted cell may span lines: report the line the row starts on
            yield start, lambda row=row, start=start: parse(row, path, start)
        start = reader.line_num + 1


def pubmedqa_rows(path, content, parse):
    """The authors' file, one JSON object PMID -> record, keyed by PMID (a str); or Hugging Face's rows, one JSON
    object per line, keyed by line (an int)."""
    if any(isinstance(rec, dict) and not looks_like_pubmedqa(rec) for rec in sniff_jsonl(content)):
        yield from jsonl_rows(path, content, parse)  # lines that are records by themselves: Hugging Face's rows
        return
    try:
        records = json.loads(content, object_pairs_hook=Pairs)
    except json.JSONDecodeError as e:
        fail(f"{path}:{e.lineno}", "json", f"{e.msg} (column {e.colno})")
    except RecursionError:  # json.loads does not say where
        fail(f"{path}:1", "file", TOO_DEEP)
    if not isinstance(records, Pairs):
        fail(f"{path}:1", "file", f"expected one JSON object PMID -> record, got {type(records).__name__}")
    seen = set()
    for pmid, rec in records:
        where = f"{path}: PMID {pmid}"
        if pmid in seen:
            yield pmid, lambda where=where: fail(where, "PMID",
                                                 "appears twice in the file; each record needs its own PMID")
        else:
            seen.add(pmid)
            yield pmid, lambda pmid=pmid, rec=rec, where=where: parse(pubmedqa_record(rec, where), path, pmid)


def pubmedqa_record(rec, where):
    try:
        return as_dicts(rec, where)
    except RecursionError:
        fail(where, "record", TOO_DEEP)


SNIFF_LINES = 20  # detection reads this many non-blank lines, so that one bad or odd first line does not decide
# the formats jsonl rows are tried in, most specific first: an MMLU-Pro row fits generic too
FIT_ORDER = ("medmcqa", "medagents", "medqa", "mmlu_pro", "pubmedqa", "generic")


def guess_from_keys(keys):
    if "choices" in keys or ("opa" in keys and "options" not in keys):
        return "medmcqa"
    if "answer_idx" in keys:
        return "medagents" if "subject" in keys else "medqa"
    if "question_id" in keys or "answer_index" in keys:
        return "mmlu_pro"
    if "options" in keys:  # a row with its own options, whatever other fields it kept
        return "generic"
    if "final_decision" in keys:
        return "pubmedqa"
    return "generic"


def looks_like_pubmedqa(whole):
    # a one-line jsonl file is one JSON object too: PMIDs as keys, or PubMedQA records as values, tell them apart
    if not isinstance(whole, dict) or not whole:
        return False
    return (all(re.fullmatch(r"[0-9]+", key) for key in whole)
            or all(isinstance(v, dict) and {"QUESTION", "final_decision"} & v.keys() for v in whole.values()))


def starts_with_mmlu_row(content):
    """Whether the first row read as CSV is an MMLU row: 6 cells, the last an answer letter."""
    try:
        row = next((row for row in csv.reader(io.StringIO(content, newline="")) if row), [])
    except csv.Error:
        return False
    return len(row) == 6 and row[5] in ("A", "B", "C", "D")


def fits(fmt, rec, path):
    try:
        PARSERS[fmt](rec, path, 1)
        return True
    except DataError:
        return False


def sniff_jsonl(content):
    """The first SNIFF_LINES non-blank lines that parse as JSON by themselves (bad lines are the loader's to report)."""
    out = []
    for raw in [raw for raw in content.split("\n") if raw.strip()][:SNIFF_LINES]:
        try:
            out.append(json.loads(raw))
        except (json.JSONDecodeError, RecursionError):
            continue
    return out


def detect_format(path, content):
    """Guess the format from the file's content: a dict of records keyed by PMID, jsonl (the first format in FIT_ORDER
    that some of the first rows parse as), else csv. Returns (format, note): the note, empty when the guess is sure,
    goes at the end of errors, so that a row read in the wrong format says so."""
    try:
        if looks_like_pubmedqa(json.loads(content)):
            return "pubmedqa", ""
    except (json.JSONDecodeError, RecursionError):
        pass  # several lines: jsonl, or csv
    records = [rec for rec in sniff_jsonl(content) if isinstance(rec, dict)]
    if not records:
        # csv, or jsonl whose sniffed lines are all bad JSON: its errors should say so. A question may start with "{"
        broken_jsonl = content.lstrip().startswith("{") and not starts_with_mmlu_row(content)
        return ("generic" if broken_jsonl else "mmlu_csv"), ""
    guess = guess_from_keys(records[0])
    fmt = next((f for f in FIT_ORDER if any(fits(f, rec, path) for rec in records)), None)
    if fmt == guess:
        return fmt, ""
    if fmt is not None:
        return fmt, (f" (format detected as {fmt}, not {guess}: no row of the first {len(records)} fits {guess}; "
                     "choose the format with fmt= or eval.py --fmt)")
    if guess == "generic":
        return guess, ""  # no other format's fields: the generic errors speak for themselves
    return guess, (f" (format detected as {guess} from the fields of the first row, but no row of the first "
                   f"{len(records)} fits any format; choose the format with fmt= or eval.py --fmt)")


def read_text(path):
    raw = path.read_bytes()
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(f"{path}:1: file: looks gzip-compressed (starts with bytes 1f 8b); decompress it first")
    try:
        content = raw.decode("utf-8-sig")  # -sig: drops the byte-order mark some editors write first
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: file: byte {raw[e.start]:#04x} is not valid UTF-8; "
                        "expected UTF-8 text") from None
    return content.replace("\r\n", "\n").replace("\r", "\n")  # line ends as text mode reads them


def load_mcqa(path, fmt=None, skip_bad=False):
    """Load a file of multiple-choice questions; fmt None detects it from content. See the module docstring."""
    path = Path(path)
    if path.is_dir():  # a FileNotFoundError still, which is what callers catch
        raise FileNotFoundError(f"{path} is a directory; expected a data file")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    content = read_text(path)
    if not content.strip():
        raise DataError(f"{path}:1: file: empty, expected multiple-choice records")
    if fmt not in ("mmlu_csv", "pubmedqa") and re.match(r"\[\s*[{\]]", content.lstrip()):
        raise DataError(f"{path}:1: file: looks like a JSON array ([{{...}}, ...]); expected JSON Lines, one object "
                        "per line (convert with: jq -c '.[]')")
    note = ""
    if fmt is None:
        fmt, note = detect_format(path, content)
    reader = {"mmlu_csv": csv_rows, "pubmedqa": pubmedqa_rows}.get(fmt, jsonl_rows)

    def place(key):  # readers key rows by line, or by PMID in PubMedQA's file
        return f"line {key}" if isinstance(key, int) else f"PMID {key}"

    items, lines, bad, line_of_id = [], [], [], {}
    parse = PARSERS[fmt]
    if fmt == "medmcqa":
        parse = functools.partial(parse_medmcqa, cop_base=medmcqa_cop_base(path, content))
    for line, row in reader(path, content, parse):
        try:
            item = row()
            if item.id in line_of_id:  # eval.py compare pairs items by id
                fail(f"{path}:{line}" if isinstance(line, int) else f"{path}: PMID {line}", "id",
                     f"{item.id!r} is already the id of {place(line_of_id[item.id])}; ids must be unique within a file")
            line_of_id[item.id] = line
            items.append(item)
            lines.append(line)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e}{note}") from None
            bad.append(str(e))
    if bad:
        print(f"{path}: skipped {len(bad)} bad rows; first: " + " | ".join(bad[:3]) + note, file=sys.stderr)
    if not items:
        raise DataError(f"{path}:1: file: no valid records ({len(bad)} bad rows skipped){note}")

    # duplicates are the user's data: keep them, but say where they are
    first_seen, repeats = {}, []
    for item, line in zip(items, lines):
        key = (item.question, tuple(item.options.items()))
        if key in first_seen:
            repeats.append(f"{place(line)} repeats {first_seen[key]}")
        else:
            first_seen[key] = line
    if repeats:
        more = f" (+{len(repeats) - 10} more)" if len(repeats) > 10 else ""
        print(f"{path}: {len(repeats)} duplicate questions (same text and options), kept: "
              + ", ".join(repeats[:10]) + more, file=sys.stderr)
    return items


# -----------------------------------------------------------------------------
# prompt templates

TAGS = "inside <think> </think> tags, then gives the letter of the single best option inside <answer> </answer> tags"
BASE_PREAMBLE = ("The following is a conversation in which a User asks a medical multiple-choice question "
                 f"and an Assistant answers it. The Assistant reasons about the question {TAGS}, "
                 "as in <think> ... </think> <answer>X</answer>.")
CHAT_SYSTEM = ("You answer medical multiple-choice questions. Reason about the question inside <think> </think> tags, "
               "then give the letter of the single best option inside <answer> </answer> tags, "
               "as in <think> ... </think> <answer>X</answer>.")
DIRECT_PREAMBLE = ("The following is a conversation in which a User asks a medical multiple-choice question "
                   "and an Assistant answers it with the letter of the single best option only.")
COT_PREAMBLE = ("The following is a conversation in which a User asks a medical multiple-choice question "
                f"and an Assistant answers it. The Assistant thinks step by step {TAGS}.")
PREFIXES = {"base": "", "chat": "", "direct": "<think>\n</think>\n<answer>", "cot": "<think>\nLet's think step by step."}


def check_template(template):
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")


def question_block(item):
    return item.question + "\n" + "\n".join(f"{letter}. {t}" for letter, t in item.options.items())


def render(item, template):
    """The full prompt text; it ends where the model's reply starts (after any pre-filled response_prefix)."""
    check_template(template)
    if template == "chat":
        return (f"<|im_start|>system\n{CHAT_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{question_block(item)}<|im_end|>\n<|im_start|>assistant\n")
    if template == "base":
        return f"{BASE_PREAMBLE}\n\nUser: {question_block(item)}\nAssistant:"
    preamble = DIRECT_PREAMBLE if template == "direct" else COT_PREAMBLE
    return f"{preamble}\n\nUser: {question_block(item)}\nAssistant: {PREFIXES[template]}"


def response_prefix(template):
    """The start of the assistant's reply that render() pre-fills; prepend it to a reply before scoring."""
    check_template(template)
    return PREFIXES[template]


def sft_target(item, template):
    """The reply a supervised model learns after render(item, template): no reasoning, just the gold letter."""
    full = f"<think>\n</think>\n<answer>{item.answer}</answer>"
    if template == "cot":
        full = f"{PREFIXES['cot']}\n</think>\n<answer>{item.answer}</answer>"
    prefix = response_prefix(template)
    assert full.startswith(prefix)
    return full[len(prefix):]


# -----------------------------------------------------------------------------
# shuffling and sharding

def shuffle_options(item, rng):
    """Permute the options with rng (a random.Random) and move the gold letter with its text."""
    texts = list(item.options.values())
    order = list(range(len(texts)))
    rng.shuffle(order)  # new position i holds old option order[i]
    gold = list(item.options).index(item.answer)
    options = {LETTERS[i]: texts[old] for i, old in enumerate(order)}
    return dataclasses.replace(item, options=options, answer=LETTERS[order.index(gold)])


def shuffled(items, seed):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def shard(items, rank, world_size):
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return list(items)[rank::world_size]


# -----------------------------------------------------------------------------
# tokenising

def encode_prompts(items, tokenizer, template, max_prompt_len, where=""):
    """Tokenise render(item, template) for each item; prompts over max_prompt_len tokens are dropped, never cut, and
    counted on stderr after `where` (e.g. the file's name)."""
    items = list(items)
    encodings = tokenizer.encode_batch([render(item, template) for item in items], add_special_tokens=False)
    kept_items, kept_ids, too_long = [], [], []
    for item, enc in zip(items, encodings):
        if len(enc.ids) > max_prompt_len:
            too_long.append(len(enc.ids))
        else:
            kept_items.append(item)
            kept_ids.append(enc.ids)
    if too_long:
        print(f"{where}dropped {len(too_long)} of {len(items)} prompts longer than {max_prompt_len} tokens; "
              f"longest {max(too_long)}", file=sys.stderr)
    return kept_items, kept_ids


# -----------------------------------------------------------------------------
# synthetic task: which (made-up) drug treats which (made-up) disease

N_DISEASES = 16
N_CHOICES = 4


def made_up_names(rng, n, endings):
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    names = set()
    while len(names) < n:
        names.add(rng.choice(syllables) + rng.choice(syllables) + rng.choice(endings))
    return sorted(names)


def synthetic_task(n_train, n_heldout, seed=0):
    """A learnable toy MCQA task: "Which drug treats <disease>?", four made-up drugs as options.

    Every drug is always listed under the same letter (drug i under LETTERS[i % 4]) and every item lists one drug of
    each letter, so which letter answers a disease is a fact to learn, like which drug treats it. Why: a model of ~1M
    parameters learns such facts in seconds, while learning to find the letter of a freely placed option (an
    induction-like lookup) took it well over a thousand steps in our trials -- too slow for a CPU demo. Distractors
    are drawn at random; held-out items are (disease, distractors) combinations never seen in training."""
    capacity = N_DISEASES * (N_DISEASES // N_CHOICES) ** (N_CHOICES - 1)
    if n_train < N_DISEASES or n_train + n_heldout > capacity:
        raise ValueError(f"need {N_DISEASES} <= n_train and n_train + n_heldout <= {capacity}, "
                         f"got {n_train} and {n_heldout}")
    rng = random.Random(seed)
    diseases = made_up_names(rng, N_DISEASES, ["sis", "tis", "mia"])
    drugs = made_up_names(rng, N_DISEASES, ["x", "l", "n", "m"])
    rng.shuffle(drugs)
    cure = dict(zip(diseases, drugs))
    by_letter = {LETTERS[k]: drugs[k::N_CHOICES] for k in range(N_CHOICES)}
    letter_of = {d: LETTERS[i % N_CHOICES] for i, d in enumerate(drugs)}

    seen = set()

    def make(disease, item_id):
        gold = cure[disease]
        while True:
            options = {L: gold if L == letter_of[gold] else rng.choice(by_letter[L]) for L in LETTERS[:N_CHOICES]}
            key = (disease, tuple(options.values()))
            if key not in seen:
                seen.add(key)
                return Item(item_id, f"Which drug treats {disease}?", options, letter_of[gold], "synthetic")

    train = [make(diseases[i % N_DISEASES], f"synthetic:train:{i}") for i in range(n_train)]
    heldout = [make(diseases[i % N_DISEASES], f"synthetic:heldout:{i}") for i in range(n_heldout)]
    rng.shuffle(train)

    def keys(items):
        return {(it.question, tuple(it.options.values())) for it in items}
    assert not keys(train) & keys(heldout), "held-out items leaked into train"
    return train, heldout


THINK_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def demo_tokenizer(texts, vocab_size=512):
    """A small byte-level BPE trained on texts: <|endoftext|> is id 0 (EOS/pad), the think/answer tags are single
    tokens. vocab_size is an upper bound counting every token (training stops early when nothing is left to merge):
    size the model with get_vocab_size()."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(THINK_TAGS), special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_tokens(THINK_TAGS)
    return tokenizer


# -----------------------------------------------------------------------------
# python data.py stats FILE

def load_tokenizer(path):
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        sys.exit(f"tokenizer not found: {file} (pass --tokenizer DIR_OR_tokenizer.json)")
    return Tokenizer.from_file(str(file))


def stats(path, fmt, template, tokenizer_path):
    tokenizer = load_tokenizer(tokenizer_path)
    items = load_mcqa(path, fmt)
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(
        [render(item, template) for item in items], add_special_tokens=False)])
    print(f"file: {path}")
    print(f"records: {len(items)}")
    print("per source: " + ", ".join(f"{s} {n}" for s, n in collections.Counter(i.source for i in items).most_common()))
    print("options per question: " + ", ".join(
        f"{k}: {n}" for k, n in sorted(collections.Counter(len(i.options) for i in items).items())))
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    print(f"prompt tokens ({template}): min {lengths.min()}, mean {lengths.mean():.1f}, p50 {p50:.0f}, "
          f"p90 {p90:.0f}, p99 {p99:.0f}, max {lengths.max()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Inspect a multiple-choice QA file.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("stats", help="counts, sources, option counts and prompt lengths in tokens")
    p.add_argument("file")
    p.add_argument("--fmt", choices=FORMATS, default=None, help="default: detect from content")
    p.add_argument("--template", choices=TEMPLATES, default="base")
    p.add_argument("--tokenizer", default=str(Path(__file__).resolve().parent.parent / "shared/data/qwen2-tokenizer"),
                   help="tokenizer folder or tokenizer.json (default: ../shared/data/qwen2-tokenizer)")
    args = parser.parse_args()
    try:
        stats(args.file, args.fmt, args.template, args.tokenizer)
    except (FileNotFoundError, DataError) as e:
        sys.exit(f"error: {e}")
