"""
Tests for data.py. Expected values come from independent references: the raw files parsed here with json/csv
directly, the counts stated in ../shared/data/SOURCES.md, PubMedQA's separate ground-truth file, the Qwen2
tokenizer's known encoding, and messages written out by hand. Tests on real data skip where ../shared is absent.
Run:
    .venv/bin/python -m pytest -q tests/test_data.py
"""

import collections
import csv
import gzip
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import data

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MMLU_CSV_COUNTS = {  # SOURCES.md, hendrycks_test_785eba5
    "dev": dict(anatomy=5, clinical_knowledge=5, college_biology=5, college_medicine=5, medical_genetics=5,
                professional_medicine=5),
    "val": dict(anatomy=14, clinical_knowledge=29, college_biology=16, college_medicine=22, medical_genetics=11,
                professional_medicine=31),
    "test": dict(anatomy=135, clinical_knowledge=265, college_biology=144, college_medicine=173, medical_genetics=100,
                 professional_medicine=282),
}
REAL_FILES = [
    ("medqa_usmle_4opt/phrases_no_exclude_dev.jsonl", "medqa", 1272),
    ("medqa_usmle_4opt/phrases_no_exclude_test.jsonl", "medqa", 1273),
    ("mmlu_pro_health/mmlu_pro_test_health.jsonl", "mmlu_pro", 818),
    ("medmcqa/validation.jsonl", "medmcqa", 4183),
    ("mmlu/medagents_mmlu_medical_test.jsonl", "medagents", 1089),
    ("pubmedqa/ori_pqal.json", "pubmedqa", 1000),
] + [(f"mmlu/hendrycks_test_785eba5/{split}/{subject}_{split}.csv", "mmlu_csv", n)
     for split, counts in MMLU_CSV_COUNTS.items() for subject, n in counts.items()]


def real(rel):
    if not DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return DATA / rel


def raw_gold_texts(path, fmt):
    """The gold option's text for every record, read straight from the file without data.py."""
    if fmt == "mmlu_csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [row[1 + "ABCD".index(row[5])] for row in csv.reader(f)]
    if fmt == "pubmedqa":
        return [rec["final_decision"] for rec in json.loads(path.read_text()).values()]
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if fmt in ("medqa", "medagents"):
        return [rec["answer"] for rec in recs]  # the stored answer text, a field data.py does not read from
    if fmt == "mmlu_pro":
        return [rec["options"][rec["answer_index"]] for rec in recs]
    if fmt == "medmcqa":
        return [rec["choices"][rec["answer"]][3:] for rec in recs]
    raise AssertionError(fmt)


# -----------------------------------------------------------------------------
# real files

@pytest.mark.parametrize("rel,fmt,count", REAL_FILES, ids=[r[0].split("/")[-1] for r in REAL_FILES])
def test_real_file_loads(rel, fmt, count):
    path = real(rel)
    items = data.load_mcqa(path)
    assert len(items) == count
    assert data.load_mcqa(path, fmt) == items  # detection picked the right format
    assert len({it.id for it in items}) == count
    for it in items:
        assert it.question.strip()
        assert list(it.options) == list("ABCDEFGHIJ"[:len(it.options)])
        assert it.answer in it.options
    assert [it.options[it.answer] for it in items] == raw_gold_texts(path, fmt)


def test_real_sources_match_sources_md():
    medagents = data.load_mcqa(real("mmlu/medagents_mmlu_medical_test.jsonl"))
    assert collections.Counter(it.source for it in medagents) == dict(
        professional_medicine=272, clinical_knowledge=265, college_medicine=173, college_biology=144, anatomy=135,
        medical_genetics=100)
    pro = data.load_mcqa(real("mmlu_pro_health/mmlu_pro_test_health.jsonl"))
    assert collections.Counter(it.source for it in pro) == {
        "ori_mmlu-" + k: n for k, n in dict(professional_medicine=254, nutrition=179, human_aging=86, anatomy=79,
                                            clinical_knowledge=72, medical_genetics=54, college_medicine=48,
                                            virology=46).items()}
    assert collections.Counter(len(it.options) for it in pro)[10] == 598
    medmcqa = data.load_mcqa(real("medmcqa/validation.jsonl"))
    assert collections.Counter(it.answer for it in medmcqa) == dict(A=1348, B=1085, C=925, D=825)
    raw = [json.loads(line) for line in real("medmcqa/validation.jsonl").read_text().splitlines()]
    assert [list(it.options.values()) for it in medmcqa] == [[c[3:] for c in r["choices"]] for r in raw]
    medqa = data.load_mcqa(real("medqa_usmle_4opt/phrases_no_exclude_test.jsonl"))
    assert set(it.source for it in medqa) == {"step1", "step2&3"}
    csv_items = data.load_mcqa(real("mmlu/hendrycks_test_785eba5/test/clinical_knowledge_test.csv"))
    assert {it.source for it in csv_items} == {"clinical_knowledge"}


def release_rows(raw, base):
    """MedMCQA rows in the layout of the authors' release (cop from 1) or of its Hugging Face copy (cop from 0)."""
    return [{"id": f"q{i}", "question": r["question"], **{k: c[3:] for k, c in zip(("opa", "opb", "opc", "opd"),
            r["choices"])}, "cop": r["answer"] + base, "choice_type": "single", "exp": None,
             "subject_name": ("Anatomy", "Surgery")[i % 2], "topic_name": None} for i, r in enumerate(raw)]


@pytest.mark.parametrize("base", [1, 0], ids=["authors", "hugging-face"])
def test_medmcqa_release_layout(tmp_path, base):
    raw = [json.loads(line) for line in real("medmcqa/validation.jsonl").read_text().splitlines()]
    stored = data.load_mcqa(real("medmcqa/validation.jsonl"))
    p = write_jsonl(tmp_path / "dev.json", release_rows(raw, base))
    items = data.load_mcqa(p)
    assert [(it.options, it.answer) for it in items] == [(it.options, it.answer) for it in stored]
    assert [it.id for it in items[:2]] == ["q0", "q1"] and {it.source for it in items} == {"Anatomy", "Surgery"}
    # a 0 among a file's cop values makes it count from 0, a 4 from 1, however few its rows
    row = {"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}
    few = [{**row, "cop": c} for c in (2, 3, 4 if base == 1 else 0)]
    assert [it.answer for it in data.load_mcqa(write_jsonl(tmp_path / "few.jsonl", few))] == \
        (["B", "C", "D"] if base == 1 else ["C", "D", "A"])
    assert [it.id for it in data.load_mcqa(write_jsonl(tmp_path / "few.jsonl", few))] == ["few:1", "few:2", "few:3"]


def test_hugging_face_mmlu_rows(tmp_path):
    """cais/mmlu rows (choices without letter prefixes, 0-based answer, subject), built from the medagents file."""
    stored = data.load_mcqa(real("mmlu/medagents_mmlu_medical_test.jsonl"))
    rows = [{"question": it.question, "subject": it.source, "choices": list(it.options.values()),
             "answer": "ABCD".index(it.answer)} for it in stored]
    items = data.load_mcqa(write_jsonl(tmp_path / "test.jsonl", rows))
    assert [(it.question, it.options, it.answer, it.source) for it in items] == \
        [(it.question, it.options, it.answer, it.source) for it in stored]


def test_medmcqa_release_bad_rows(tmp_path):
    row = {"id": "x1", "question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4}
    p = write_jsonl(tmp_path / "test.json", [row, {**row, "id": "x2", "cop": -1}])
    expect_error(p, f"{p}:2: cop: -1 out of range 1-4 (the correct option, counted from 1 in this file; -1 marks an "
                    "unlabelled test row)")
    p = write_jsonl(tmp_path / "opc.json", [{**row, "opc": " "}])
    expect_error(p, f"{p}:1: opc: expected non-empty text", "medmcqa")
    p = write_jsonl(tmp_path / "str.json", [{**row, "cop": "4"}])
    expect_error(p, f"{p}:1: cop: expected int, got str", "medmcqa")
    # a file that does not show where cop counts from is refused whole, even with skip_bad: never read shifted
    ambiguous = (f"{tmp_path / 'few.json'}:1: cop: only [1, 3]: cannot tell whether cop counts options from 0 "
                 "(Hugging Face's copy of MedMCQA) or from 1 (the authors' files); convert the file to the generic "
                 "jsonl, with the answer as a letter")
    mixed = (f"{tmp_path / 'mixed.json'}:1: cop: holds both 0 and 4: rows counting options from 0 (Hugging Face's copy "
             "of MedMCQA) and from 1 (the authors' files) are mixed; expected one or the other")
    unlabelled = f"{tmp_path / 'hf_test.json'}:1: cop: -1 on every row (unlabelled, as in MedMCQA's test split); " \
                 "expected answers"
    for name, cops, message in (("few", (1, 3, -1), ambiguous), ("mixed", (4, 0, 1, 2), mixed),
                                ("hf_test", (-1, -1), unlabelled), ("few", (1, 3, 7), ambiguous)):
        p = write_jsonl(tmp_path / f"{name}.json", [{**row, "id": f"x{i}", "cop": c} for i, c in enumerate(cops)])
        for skip_bad in (False, True):
            with pytest.raises(data.DataError) as e:
                data.load_mcqa(p, skip_bad=skip_bad)
            assert str(e.value) == message


def test_choices_are_lettered_only_when_every_one_is(tmp_path):
    """"A. text" prefixes are stripped when each choice has its own; otherwise the choices are plain texts (an MMLU
    option may itself start "A. ", as "A. israelii" does)."""
    rows = [{"question": "Q", "choices": ["A. x", "B. y", "C. z"], "answer": 1},
            {"question": "Q2", "choices": ["A. israelii", "N. asteroides", "S. aureus"], "answer": 0},
            {"question": "Q3", "choices": ["A) x", "B) y"], "answer": 1}]
    items = data.load_mcqa(write_jsonl(tmp_path / "c.jsonl", rows))
    assert [it.options for it in items] == [{"A": "x", "B": "y", "C": "z"},
                                            {"A": "A. israelii", "B": "N. asteroides", "C": "S. aureus"},
                                            {"A": "A) x", "B": "B) y"}]


def test_real_pubmedqa_agrees_with_ground_truth_file():
    items = {it.id: it for it in data.load_mcqa(real("pubmedqa/ori_pqal.json"))}
    truth = json.loads(real("pubmedqa/test_ground_truth.json").read_text())
    assert len(truth) == 500
    for pmid, label in truth.items():
        it = items[pmid]
        assert it.options == {"A": "yes", "B": "no", "C": "maybe"}
        assert it.options[it.answer] == label
    raw = json.loads(real("pubmedqa/ori_pqal.json").read_text())["21645374"]
    assert items["21645374"].question == "\n".join(raw["CONTEXTS"] + [raw["QUESTION"]])
    assert collections.Counter(it.answer for it in items.values()) == dict(A=552, B=338, C=110)


def test_real_label_file_is_rejected_clearly():
    path = real("pubmedqa/test_ground_truth.json")
    with pytest.raises(data.DataError, match=re.escape(f"{path}: PMID 12377809: record: expected an object")):
        data.load_mcqa(path)


def test_real_duplicates_reported(capsys):
    data.load_mcqa(real("mmlu_pro_health/mmlu_pro_test_health.jsonl"))
    assert "95 duplicate questions" in capsys.readouterr().err  # SOURCES.md: 95 rows repeat another row
    data.load_mcqa(real("mmlu/medagents_mmlu_medical_test.jsonl"))
    assert "78 duplicate questions" in capsys.readouterr().err


def test_qwen_tokenizer_known_encoding():
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(real("qwen2-tokenizer/tokenizer.json")))
    assert tok.encode("<|im_start|>hello<|im_end|>", add_special_tokens=False).ids == [151644, 14990, 151645]


def test_stats_command_runs():
    path = real("medqa_usmle_4opt/phrases_no_exclude_dev.jsonl")
    out = subprocess.run([sys.executable, "data.py", "stats", str(path)], cwd=Path(data.__file__).parent,
                         capture_output=True, text=True, check=True).stdout
    assert "records: 1272" in out and "options per question: 4: 1272" in out
    assert re.search(r"prompt tokens \(base\): min \d+, mean [\d.]+, p50 \d+, p90 \d+, p99 \d+, max \d+", out)


# -----------------------------------------------------------------------------
# malformed files

MEDQA_ROW = {"question": "Q?", "answer": "y", "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
             "meta_info": "step1", "answer_idx": "B"}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def expect_error(path, message, fmt=None):
    with pytest.raises(data.DataError) as e:
        data.load_mcqa(path, fmt)
    assert str(e.value) == message


def test_bad_json_reports_line_after_blank_lines(tmp_path):
    p = write_jsonl(tmp_path / "medqa_dev.jsonl", [MEDQA_ROW, "", '{"question": "Q?", oops}'])
    with pytest.raises(data.DataError, match=rf"^{re.escape(str(p))}:3: json: Expecting property name"):
        data.load_mcqa(p, "medqa")


def test_answer_not_among_options_exact_message(tmp_path):
    p = write_jsonl(tmp_path / "medqa_dev.jsonl", [MEDQA_ROW] * 16 + [{**MEDQA_ROW, "answer_idx": "E"}])
    expect_error(p, f"{p}:17: answer_idx: 'E' not among options A-D")


def test_missing_field(tmp_path):
    row = dict(MEDQA_ROW)
    del row["meta_info"]
    expect_error(write_jsonl(tmp_path / "m.jsonl", [MEDQA_ROW, row]), f"{tmp_path / 'm.jsonl'}:2: meta_info: missing",
                 "medqa")


def test_empty_question(tmp_path):
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "  ", "options": ["a", "b"], "answer": "A"}])
    expect_error(p, f"{p}:1: question: expected non-empty text")


def test_wrong_types(tmp_path):
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": "a b c", "answer": "A"}])
    expect_error(p, f"{p}:1: options: expected dict or list, got str")
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": ["a", "b"], "answer": 1}])
    expect_error(p, f"{p}:1: answer: expected str, got int")  # list options take a letter, never an index
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": ["a", 7], "answer": "A"}])
    expect_error(p, f"{p}:1: options.B: expected a string, got int")
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "question": "Q", "options": ["a", "b", "c"],
                                            "answer": "B", "answer_index": True, "src": "s"}])
    expect_error(p, f"{p}:1: answer_index: expected int, got bool", "mmlu_pro")
    p = write_jsonl(tmp_path / "l.jsonl", [[1, 2]])
    expect_error(p, f"{p}:1: record: expected a JSON object, got list", "generic")


def test_option_checks(tmp_path):
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": {"A": "a", "C": "c"}, "answer": "A"}])
    expect_error(p, f"{p}:1: options: expected keys A, B (consecutive letters from A), got A, C")
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": ["only"], "answer": "A"}])
    expect_error(p, f"{p}:1: options: expected 2 to 26 options, got 1")
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": ["a", " "], "answer": "A"}])
    expect_error(p, f"{p}:1: options.B: expected non-empty option text")
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "question": "Q", "options": ["a", "b", "c"],
                                            "answer": "B", "answer_index": 2, "src": "s"}])
    expect_error(p, f"{p}:1: answer: 'B' disagrees with answer_index 2 (C)", "mmlu_pro")
    for n in (2, 11):  # MMLU-Pro has 3-10
        p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "question": "Q", "options": list("abcdefghijk"[:n]),
                                                "answer": "A", "answer_index": 0, "src": "s"}])
        expect_error(p, f"{p}:1: options: expected 3-10 options (MMLU-Pro), got {n}", "mmlu_pro")
    p = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Q", "choices": ["A. a", 2, "C. c", "D. d"], "answer": 0}])
    expect_error(p, f"{p}:1: choices.B: expected a string, got int", "medmcqa")
    p = write_jsonl(tmp_path / "m.jsonl", [{**MEDQA_ROW, "answer": "x"}])
    expect_error(p, f"{p}:1: answer: 'x' is not the text of option B ('y')", "medqa")


def test_bad_csv_rows(tmp_path):
    p = tmp_path / "anatomy_test.csv"
    # row 1 spans lines 1-2 (quoted newline), so the short row starts on line 3
    p.write_text('"two\nlines",a,b,c,d,A\nq,a,b,c,B\n')
    expect_error(p, f"{p}:3: row: expected 6 columns (question, A, B, C, D, answer), got 5")
    p.write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    expect_error(p, f"{p}:2: answer: 'E' not among options A-D")
    p.write_text("q,a,,c,d,A\n")
    expect_error(p, f"{p}:1: B: expected non-empty text")
    # over csv's cell limit the reader cannot go on, so not even skip_bad reads past the row
    p.write_text("q,a,b,c,d,A\n" + "q" * 200_000 + ",a,b,c,d,B\nq3,a,b,c,d,C\n")
    message = (f"{p}:2: row: field larger than field limit (131072); expected cells of at most 131072 characters "
               "(the file is not read past this row)")
    expect_error(p, message)
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.load_mcqa(p, skip_bad=True)


def test_csv_question_starting_with_brace_is_csv(tmp_path):
    p = tmp_path / "college_biology_test.csv"
    p.write_text("{x} denotes a set. Which is true?,a,b,c,d,A\nq2,a,b,c,d,B\n")
    assert [it.question for it in data.load_mcqa(p)] == ["{x} denotes a set. Which is true?", "q2"]
    # a jsonl file of Python dicts is still jsonl, so that its error is about JSON
    p = write_jsonl(tmp_path / "py.jsonl", ["{'question': 'Q', 'options': ['a', 'b', 'c', 'd'], 'answer': 'A'}"] * 2)
    expect_error(p, f"{p}:1: json: Expecting property name enclosed in double quotes (column 2)")


def test_deeply_nested_json_is_a_bad_row(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    too_deep = "nested too deeply to read (Python's recursion limit); expected records nested a few levels at most"
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "options": ["x", "y"], "answer": "A"},
                                           '{"question": %s}' % deep])
    expect_error(p, f"{p}:2: json: {too_deep}")
    expect_error(p, f"{p}:2: json: {too_deep}", "generic")
    assert [it.question for it in data.load_mcqa(p, skip_bad=True)] == ["Q"]
    p = tmp_path / "pq.json"
    p.write_text('{"111": {"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "yes"},\n"222": %s}' % deep)
    expect_error(p, f"{p}:1: file: {too_deep}", "pubmedqa")


def test_hugging_face_pubmedqa_rows(tmp_path):
    """qiaojin/PubMedQA rows as jsonl (pubid, question, context.contexts, final_decision), built from the authors'
    file: the same items, found by content, one row or many."""
    raw = json.loads(real("pubmedqa/ori_pqal.json").read_text())
    rows = [{"pubid": int(pmid), "question": r["QUESTION"], "context": {"contexts": r["CONTEXTS"], "labels": r["LABELS"],
             "meshes": r["MESHES"]}, "long_answer": r["LONG_ANSWER"], "final_decision": r["final_decision"]}
            for pmid, r in raw.items()]
    stored = data.load_mcqa(real("pubmedqa/ori_pqal.json"))
    for n in (len(rows), 1):
        items = data.load_mcqa(write_jsonl(tmp_path / f"pqa_{n}.jsonl", rows[:n]))
        assert [(it.id, it.question, it.options, it.answer) for it in items] == \
            [(it.id, it.question, it.options, it.answer) for it in stored[:n]]
    # rows are named by line; ids (pubids) must be unique
    bad = [rows[0], {**rows[1], "context": {"contexts": "one string"}}, {**rows[2], "final_decision": "perhaps"},
           rows[3], rows[0]]
    p = write_jsonl(tmp_path / "bad.jsonl", bad)
    expect_error(p, f"{p}:2: context.contexts: expected a list of strings, got str")
    expect_error(p, f"{p}:2: context.contexts: expected a list of strings, got str", "pubmedqa")
    p = write_jsonl(tmp_path / "bad.jsonl", bad[2:])
    expect_error(p, f"{p}:1: final_decision: 'perhaps' is not one of yes, no, maybe")
    assert [it.id for it in data.load_mcqa(p, skip_bad=True)] == [str(rows[3]["pubid"]), str(rows[0]["pubid"])]
    p = write_jsonl(tmp_path / "bad.jsonl", [rows[0], rows[1], rows[0]])
    expect_error(p, f"{p}:3: id: '{rows[0]['pubid']}' is already the id of line 1; ids must be unique within a file")
    p = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "context": {"labels": []}}])
    expect_error(p, f"{p}:1: context.contexts: missing", "pubmedqa")
    # a bad first line is that line's error (and skip_bad skips it), not the whole file's
    p = tmp_path / "first.jsonl"
    p.write_text(json.dumps(rows[0])[:-1] + "\n" + "".join(json.dumps(r) + "\n" for r in rows[1:3]))
    expect_error(p, f"{p}:1: json: Expecting ',' delimiter (column {len(json.dumps(rows[0]))})")
    assert len(data.load_mcqa(p, skip_bad=True)) == 2
    # the authors' file with something after its object: the JSON error, where it is
    p = tmp_path / "pq.json"
    p.write_text(json.dumps(raw, indent=1) + "\n}\n")
    line = json.dumps(raw, indent=1).count("\n") + 2
    expect_error(p, f"{p}:{line}: json: Extra data (column 1)", "pubmedqa")


def test_generic_rows_that_keep_other_formats_fields_stay_generic(tmp_path):
    """A row with its own options and answer is the user's, whatever fields of PubMedQA or MedMCQA it kept."""
    pq = {"pubid": 1, "question": "Q?", "context": {"contexts": ["c"]}, "final_decision": "yes",
          "options": {"A": "yes", "B": "no"}, "answer": "B", "id": "q1"}
    mc = {"question": "Q2?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1,
          "options": {"A": "d", "B": "c", "C": "b", "D": "a"}, "answer": "D", "id": "q2"}
    for row in (pq, mc):
        items = data.load_mcqa(write_jsonl(tmp_path / "mine.jsonl", [row, {**row, "id": "other"}]))
        assert [(it.id, it.question, it.options, it.answer) for it in items[:1]] == \
            [(row["id"], row["question"], row["options"], row["answer"])]


def test_pubmedqa_error_names_the_record_key(tmp_path):
    p = tmp_path / "pq.json"
    p.write_text(json.dumps({"111": {"QUESTION": "Q?", "CONTEXTS": ["c"], "final_decision": "yes"},
                             "222": {"QUESTION": "Q?", "CONTEXTS": ["c"], "final_decision": "perhaps"}}))
    expect_error(p, f"{p}: PMID 222: final_decision: 'perhaps' is not one of yes, no, maybe")


def test_skip_bad_skips_and_counts(tmp_path, capsys):
    bad = [{**MEDQA_ROW, "answer_idx": "Z"}, "{not json", {**MEDQA_ROW, "question": ""}]
    rows = [{**MEDQA_ROW, "question": f"Q{i}?"} for i in range(7)]
    p = write_jsonl(tmp_path / "m.jsonl", rows[:2] + bad[:1] + rows[2:5] + bad[1:] + rows[5:])
    with pytest.raises(data.DataError, match=re.escape(f"{p}:3: answer_idx")):
        data.load_mcqa(p)
    items = data.load_mcqa(p, skip_bad=True)
    assert [it.question for it in items] == [f"Q{i}?" for i in range(7)]
    err = capsys.readouterr().err
    assert "skipped 3 bad rows" in err and f"{p}:3: answer_idx" in err and f"{p}:7: json" in err
    p = write_jsonl(tmp_path / "allbad.jsonl", bad)
    with pytest.raises(data.DataError, match="no valid records"):
        data.load_mcqa(p, "medqa", skip_bad=True)


def test_duplicates_reported_with_lines_and_kept(tmp_path, capsys):
    a, b = {"question": "Q1", "options": ["x", "y"], "answer": "A"}, {"question": "Q2", "options": ["x", "y"], "answer": "B"}
    same_text_other_options = {"question": "Q1", "options": ["x", "z"], "answer": "A"}
    p = write_jsonl(tmp_path / "g.jsonl", [a, b, "", a, same_text_other_options, b])
    assert len(data.load_mcqa(p)) == 5
    err = capsys.readouterr().err
    assert "2 duplicate questions" in err and "line 4 repeats 1" in err and "line 6 repeats 2" in err


def test_generic_defaults_and_ids(tmp_path):
    p = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "Q1", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "C", "id": 42, "source": "cardio"},
        "",
        {"question": "Q2", "options": ["x", "y"], "answer": "B"}])
    assert data.load_mcqa(p) == [
        data.Item("42", "Q1", {"A": "x", "B": "y", "C": "z"}, "C", "cardio"),
        data.Item("mine:3", "Q2", {"A": "x", "B": "y"}, "B", "mine")]


def test_missing_empty_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        data.load_mcqa(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n \n")
    expect_error(tmp_path / "empty.jsonl", f"{tmp_path / 'empty.jsonl'}:1: file: empty, expected multiple-choice records")
    with pytest.raises(ValueError, match="medqa, mmlu_pro"):
        data.load_mcqa(write_jsonl(tmp_path / "m.jsonl", [MEDQA_ROW]), "medqa_v2")


def test_utf8_bom_is_ignored(tmp_path):
    row = {"question": "Q", "options": ["x", "y"], "answer": "B"}
    p = tmp_path / "g.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode())
    assert data.load_mcqa(p) == data.load_mcqa(p, "generic") == [data.Item("g:1", "Q", {"A": "x", "B": "y"}, "B", "g")]
    p = tmp_path / "pq.json"
    record = {"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "no"}
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"111": record}).encode())
    assert [it.id for it in data.load_mcqa(p)] == ["111"]
    p = tmp_path / "anatomy_test.csv"
    p.write_bytes(b"\xef\xbb\xbfq,a,b,c,d,A\n")
    assert data.load_mcqa(p)[0].question == "q"


def test_detection_looks_past_a_bad_first_line(tmp_path):
    rows = [{"question": f"Q{i}", "options": ["x", "y"], "answer": "A"} for i in range(3)]
    p = write_jsonl(tmp_path / "g.jsonl", ["not json"] + rows)
    expect_error(p, f"{p}:1: json: Expecting value (column 1)")
    assert [it.question for it in data.load_mcqa(p, skip_bad=True)] == ["Q0", "Q1", "Q2"]


@pytest.mark.parametrize("extra", [
    {"question_id": 7}, {"question_id": 7, "options": {"A": "x", "B": "y"}}, {"answer_idx": "B"},
    {"answer_idx": "B", "subject": "anatomy"}, {"choices": ["x", "y"]}, {"answer_index": 1}])
def test_generic_rows_with_extra_fields_stay_generic(tmp_path, extra):
    rows = [{"question": f"Q{i}", "options": ["x", "y"], "answer": "B", **extra} for i in range(2)]
    p = write_jsonl(tmp_path / "mine.jsonl", rows)
    assert data.load_mcqa(p) == [data.Item(f"mine:{i + 1}", f"Q{i}", {"A": "x", "B": "y"}, "B", "mine")
                                 for i in range(2)]


@pytest.mark.parametrize("row,message", [
    ({k: v for k, v in MEDQA_ROW.items() if k != "question"}, ":1: question: missing (format detected as medqa from "
     "the fields of the first row, but no row of the first 1 fits any format; choose the format with fmt= or "
     "eval.py --fmt)"),
    ({"Question": "Q?", "options": ["x", "y"], "answer": "A"}, ":1: question: missing"),
    ({}, ":1: question: missing")], ids=["medqa", "generic", "empty"])
def test_one_line_jsonl_is_not_taken_for_pubmedqa(tmp_path, row, message):
    # one line is one JSON object, like a PubMedQA file, but neither its keys nor its values are PubMedQA's
    p = write_jsonl(tmp_path / "mine.jsonl", [row])
    expect_error(p, f"{p}{message}")


def test_detection_fallback_is_named_in_errors(tmp_path):
    # fell back to generic: a later bad row says so and how to choose the format
    rows = [{"question": "Q", "options": ["x", "y"], "answer": "B", "answer_idx": "B"}] * 2
    p = write_jsonl(tmp_path / "g.jsonl", rows + [{"question": "Q3", "options": ["x", "y"], "answer": "E"}])
    expect_error(p, f"{p}:3: answer: 'E' not among options A-B (format detected as generic, not medqa: no row of "
                    f"the first 3 fits medqa; choose the format with fmt= or eval.py --fmt)")
    # nothing fits: the guess from the keys is kept and named
    p = write_jsonl(tmp_path / "m.jsonl", [{**MEDQA_ROW, "answer": "x"}])
    expect_error(p, f"{p}:1: answer: 'x' is not the text of option B ('y') (format detected as medqa from the fields "
                    f"of the first row, but no row of the first 1 fits any format; choose the format with fmt= or "
                    "eval.py --fmt)")


def test_jsonl_splits_on_newline_only(tmp_path):
    rows = [{"question": "a\u2028b\u2029c\x85d", "options": ["x\u2028", "y"], "answer": "A"},
            {"question": "Q2", "options": ["x", "y"], "answer": "B"},
            {"question": "Q3", "options": ["x"], "answer": "A"}]
    p = tmp_path / "g.jsonl"
    p.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    expect_error(p, f"{p}:3: options: expected 2 to 26 options, got 1")
    items = data.load_mcqa(p, skip_bad=True)
    assert [it.question for it in items] == ["a\u2028b\u2029c\x85d", "Q2"] and items[0].options["A"] == "x\u2028"


def test_undecodable_files_named(tmp_path):
    row = json.dumps({"question": "Q", "options": ["x", "y"], "answer": "A"}) + "\n"
    p = tmp_path / "g.jsonl.gz"
    p.write_bytes(gzip.compress(row.encode()))
    expect_error(p, f"{p}:1: file: looks gzip-compressed (starts with bytes 1f 8b); decompress it first")
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(row.encode() + row.replace("Q", "Caf\xe9").encode("latin-1"))
    expect_error(p, f"{p}:2: file: byte 0xe9 is not valid UTF-8; expected UTF-8 text")


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} is a directory; expected a data file")):
        data.load_mcqa(tmp_path)


def test_duplicate_json_keys_are_malformed(tmp_path):
    good = '{"question": "Q1", "options": ["x", "y"], "answer": "A"}'
    # two answers: json alone would keep "B" silently
    p = write_jsonl(tmp_path / "g.jsonl", [good, '{"question": "Q2", "options": ["x", "y"], "answer": "A", '
                                                 '"answer": "B"}'])
    expect_error(p, f"{p}:2: answer: appears twice in one object (JSON keys must be unique)")
    p = write_jsonl(tmp_path / "g.jsonl", [good, '{"question": "Q2", "options": {"A": "x", "B": "y", "A": "z"}, '
                                                 '"answer": "A"}'])
    expect_error(p, f"{p}:2: options.A: appears twice in one object (JSON keys must be unique)")
    assert [it.question for it in data.load_mcqa(p, skip_bad=True)] == ["Q1"]
    rec = '{"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "%s"}'
    p = tmp_path / "pq.json"
    p.write_text('{"111": %s, "222": %s, "111": %s}' % (rec % "yes", rec % "no", rec % "maybe"))
    expect_error(p, f"{p}: PMID 111: PMID: appears twice in the file; each record needs its own PMID")
    assert [(it.id, it.answer) for it in data.load_mcqa(p, skip_bad=True)] == [("111", "A"), ("222", "B")]
    p.write_text('{"111": {"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "yes", "QUESTION": "R?"}}')
    expect_error(p, f"{p}: PMID 111: QUESTION: appears twice in one object (JSON keys must be unique)")


def test_duplicate_ids_are_errors(tmp_path):
    rows = [{"question": f"Q{i}", "options": ["x", "y"], "answer": "A", "id": i % 2} for i in range(3)]
    p = write_jsonl(tmp_path / "g.jsonl", rows)
    expect_error(p, f"{p}:3: id: '0' is already the id of line 1; ids must be unique within a file")
    assert [it.question for it in data.load_mcqa(p, skip_bad=True)] == ["Q0", "Q1"]
    # an explicit id may collide with one made from a line number
    no_id = {"question": "Q1", "options": ["x", "y"], "answer": "A"}
    p = write_jsonl(tmp_path / "g.jsonl", [{**rows[0], "id": "g:2"}, no_id])
    expect_error(p, f"{p}:2: id: 'g:2' is already the id of line 1; ids must be unique within a file")


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_file_is_named(tmp_path, indent):
    p = tmp_path / "g.json"
    p.write_text(json.dumps([{"question": "Q", "options": ["x", "y"], "answer": "A"}] * 2, indent=indent))
    message = (f"{p}:1: file: looks like a JSON array ([{{...}}, ...]); expected JSON Lines, one object per line "
               "(convert with: jq -c '.[]')")
    expect_error(p, message)
    expect_error(p, message, "generic")


# -----------------------------------------------------------------------------
# templates

ITEMS = [
    data.Item("1", "Which vitamin deficiency causes scurvy?", {"A": "A", "B": "B12", "C": "C", "D": "D"}, "C", "s"),
    data.Item("2", "Pick J.", {L: f"option {L}" for L in "ABCDEFGHIJ"}, "J", "s"),
    data.Item("3", "Yes or no?", {"A": "yes", "B": "no", "C": "maybe"}, "B", "s"),
]


@pytest.mark.parametrize("template", data.TEMPLATES)
def test_template_renders(template):
    item = ITEMS[0]
    prompt = data.render(item, template)
    assert item.question in prompt
    assert "A. A\nB. B12\nC. C\nD. D" in prompt
    assert prompt.endswith(data.response_prefix(template))
    assert "<think>" in prompt and "<answer>" in prompt
    ending = {"base": "\nAssistant:", "chat": "<|im_end|>\n<|im_start|>assistant\n",
              "direct": "\nAssistant: <think>\n</think>\n<answer>", "cot": "\nAssistant: <think>\nLet's think step by step."}
    assert prompt.endswith(ending[template])
    if template == "chat":
        assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in prompt


def test_sft_targets_exact():
    item = ITEMS[0]
    assert data.sft_target(item, "base") == data.sft_target(item, "chat") == "<think>\n</think>\n<answer>C</answer>"
    assert data.sft_target(item, "direct") == "C</answer>"
    assert data.response_prefix("base") == data.response_prefix("chat") == ""


@pytest.mark.parametrize("template", data.TEMPLATES)
def test_sft_target_scores_one_with_verifier(template):
    import verifier  # written alongside; imported here so the other tests run without it
    for item in ITEMS:
        reply = data.response_prefix(template) + data.sft_target(item, template)
        assert verifier.score(reply, item.answer, item.options).reward == 1
        wrong = next(L for L in item.options if L != item.answer)
        assert verifier.score(reply, wrong, item.options).reward == 0  # the letter, not just the format, counts


def test_unknown_template_lists_templates():
    for call in (lambda: data.render(ITEMS[0], "qwen"), lambda: data.response_prefix("qwen"),
                 lambda: data.sft_target(ITEMS[0], "qwen")):
        with pytest.raises(ValueError, match="base, chat, direct, cot"):
            call()


# -----------------------------------------------------------------------------
# shuffling, sharding, encoding

def test_shuffle_options_moves_gold_with_its_text():
    item = ITEMS[1]
    moved = 0
    for seed in range(50):
        new = data.shuffle_options(item, random.Random(seed))
        assert new.options[new.answer] == "option J"
        assert list(new.options) == list("ABCDEFGHIJ")
        assert sorted(new.options.values()) == sorted(item.options.values())
        assert (new.id, new.question, new.source) == (item.id, item.question, item.source)
        assert new == data.shuffle_options(item, random.Random(seed))
        moved += new.answer != "J"
    assert moved > 40
    # identical option texts: the gold one is tracked by position, not by text
    twin = data.Item("t", "Q", {"A": "same", "B": "same", "C": "other"}, "B", "s")
    for seed in range(20):
        new = data.shuffle_options(twin, random.Random(seed))
        assert new.options[new.answer] == "same"


def test_shuffled_and_shard():
    items = [data.Item(str(i), f"Q{i}", {"A": "a", "B": "b"}, "A", "s") for i in range(23)]
    a = data.shuffled(items, seed=1)
    assert a == data.shuffled(items, seed=1) and a != data.shuffled(items, seed=2) and a != items
    assert sorted(a, key=lambda it: int(it.id)) == items
    assert [it.id for it in items] == [str(i) for i in range(23)]  # input untouched
    for world in (1, 2, 3, 8, 30):
        shards = [data.shard(a, r, world) for r in range(world)]
        assert sorted((it.id for s in shards for it in s), key=int) == [str(i) for i in range(23)]
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert shards[0][:2] == a[0:2 * world:world]
    with pytest.raises(ValueError):
        data.shard(a, 3, 3)


def test_encode_prompts_drops_long_prompts_never_cuts(capsys):
    train, _ = data.synthetic_task(64, 0, seed=0)
    tok = data.demo_tokenizer([data.render(it, "base") for it in train])
    items = [data.Item(str(i), "Which drug treats " + "very " * (40 * i) + "bad fever?", {"A": "a", "B": "b"},
                       "A", "s") for i in range(6)]
    lengths = [len(tok.encode(data.render(it, "base"), add_special_tokens=False).ids) for it in items]
    limit = sorted(lengths)[2]  # exactly 3 prompts fit
    kept, ids = data.encode_prompts(items, tok, "base", limit)
    assert [it.id for it in kept] == [it.id for it, n in zip(items, lengths) if n <= limit]
    assert ids == [tok.encode(data.render(it, "base"), add_special_tokens=False).ids for it in kept]
    assert capsys.readouterr().err.strip() == \
        f"dropped 3 of 6 prompts longer than {limit} tokens; longest {max(lengths)}"
    kept, ids = data.encode_prompts(items, tok, "base", max(lengths))
    assert len(kept) == 6 and capsys.readouterr().err == ""


# -----------------------------------------------------------------------------
# synthetic task and demo tokenizer

def test_synthetic_task_seeded_and_disjoint():
    train, held = data.synthetic_task(300, 100, seed=5)
    assert (train, held) == data.synthetic_task(300, 100, seed=5)
    assert train != data.synthetic_task(300, 100, seed=6)[0]
    assert len(train) == 300 and len(held) == 100

    def key(it):
        return it.question, tuple(it.options.values())
    assert not {key(it) for it in train} & {key(it) for it in held}
    assert len({key(it) for it in train + held}) == 400
    cure = {}
    for it in train + held:
        assert re.fullmatch(r"Which drug treats [a-z]+\?", it.question) and it.source == "synthetic"
        assert list(it.options) == list("ABCD") and len(set(it.options.values())) == 4
        disease = it.question.split()[-1][:-1]
        assert cure.setdefault(disease, it.options[it.answer]) == it.options[it.answer]  # one drug per disease
    assert len(cure) == 16 and len(set(cure.values())) == 16
    assert {it.question for it in held} <= {it.question for it in train}
    assert len({it.question for it in train}) == 16  # every disease is trained on
    assert collections.Counter(it.answer for it in train).keys() == set("ABCD")
    with pytest.raises(ValueError):
        data.synthetic_task(10, 5)


def test_demo_tokenizer_roundtrip_and_deterministic():
    train, held = data.synthetic_task(200, 20, seed=0)
    texts = [data.render(it, "base") + data.sft_target(it, "base") for it in train]
    tok = data.demo_tokenizer(texts)
    assert tok.get_vocab() == data.demo_tokenizer(texts).get_vocab()
    assert tok.get_vocab_size() <= 512
    assert data.demo_tokenizer(texts, vocab_size=300).get_vocab_size() == 300
    assert tok.token_to_id("<|endoftext|>") == 0
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    for s in texts[:5] + [data.render(held[0], "chat"), "héllo  wörld\t🙂\n\n<think>x</think> <answer>Z</answer> "]:
        assert tok.decode(tok.encode(s, add_special_tokens=False).ids) == s
    ids = tok.encode("<think>\n</think>\n<answer>B</answer>", add_special_tokens=False).ids
    assert [tok.id_to_token(i) for i in ids if tok.id_to_token(i) in tags] == tags
    assert len(ids) == 7  # 4 tags + 2 newlines + the letter
    names = {v for it in train for v in it.options.values()} | {it.question.split()[-1][:-1] for it in train}
    assert max(len(tok.encode(" " + n, add_special_tokens=False).ids) for n in names) <= 3
