"""Evaluation: answer MCQA items with the KV-cached sampler, score them with the verifier, bootstrap the errors;
compare two evaluations on their shared items; turn a training run's logs into plots and a markdown report.

    python eval.py --model CKPT --data FILE [FILE ...] --template base --out DIR
    python eval.py --model CKPT --data FILE --template base --out DIR --samples 8 --temperature 1.0   # pass@8, vote
    torchrun --nproc_per_node 8 eval.py --model CKPT --data FILE ... --out DIR   # items sharded over ranks
    python eval.py compare A/results.json B/results.json     # paired bootstrap of accuracy(B) - accuracy(A)
    python eval.py report RUN_DIR                           # RUN_DIR/report/: PNG plots + report.md

CKPT is a Hugging Face model folder (config.json, model.safetensors, tokenizer.json), a run checkpoint
(checkpoints/step_XXXXXX, holding model/) or a run folder (its latest checkpoint is used).

DIR/results.json holds, for each data file (under its file name without extension; folder/name where two files share
a name) and for all of them together
(under "all"): n (items), accuracy, bootstrap_std and ci95 (of the accuracy, items resampled), format_rate,
mean_response_tokens (EOS included; with --stop, the reply up to the stop text), mean_think_words, patterns (share
of each verifier.PATTERNS label), by_source ({source: {n, accuracy}}), dropped (prompts too long for the context)
and, with --samples k > 1, pass_at_k (an item counts if any of its k replies is right) and majority_accuracy (the
most frequent answer letter of the k replies; ties go to the letter given first; no letter at all is wrong);
accuracy is then the mean over all k * n replies. DIR/items.jsonl holds one record per (item, sample): the prompt, the
reply, the verdict, gold and options. `response` leaves out what the template pre-fills (it ends the prompt), so
the reply is rescored as verifier.score(data.response_prefix(template) + response, gold, options).
A model folder that names no end-of-text token gets a warning, and its replies run to --max-new-tokens.
"""

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import model as M
import verifier


@torch.no_grad()
def answer_items(lm, tokenizer, items, template, max_new_tokens, batch_size=64, temperature=0.0, samples=1,
                 seed=0, eos_ids=(), progress=False, strict=False, min_think_words=0, stop=None):
    """Generates `samples` replies per item and scores each. Returns one record per (item, sample), in item order.
    `eos_ids`: the tokens that end a reply (model.args.eos_ids); none: replies run to max_new_tokens.
    `stop`: each reply ends after the first occurrence of this text (kept), as if the model had stopped there; the
    sampler stops such a row within a few tokens instead of writing on to EOS or max_new_tokens."""
    prefix = data.response_prefix(template)
    prompts = [data.render(it, template) for it in items]
    ids = [e.ids for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
    jobs = [(i, s) for i in range(len(items)) for s in range(samples)]
    records = []
    stopped = (lambda toks: stop in tokenizer.decode(toks, skip_special_tokens=False)) if stop else None
    bar = tqdm(total=len(jobs), desc="answering", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        out = M.generate(lm, [ids[i] for i, _ in chunk], max_new_tokens, temperature=temperature, eos_id=list(eos_ids),
                         seed=seed + start, stop=stopped)
        for (i, s), toks in zip(chunk, out.tokens):
            it = items[i]
            body = toks[:-1] if toks and toks[-1] in eos_ids else toks
            response = tokenizer.decode(body, skip_special_tokens=False)
            if stop and stop in response:
                response = response[:response.index(stop) + len(stop)]
                toks = tokenizer.encode(response, add_special_tokens=False).ids
            sc = verifier.score(prefix + response, it.answer, it.options, strict=strict,
                                min_think_words=min_think_words)
            records.append(dict(
                id=it.id, source=it.source, sample=s, prompt=prompts[i], response=response, pred=sc.pred,
                gold=it.answer, options=it.options, reward=sc.reward, format_ok=sc.format_ok, correct=sc.correct,
                pattern=verifier.pattern(prefix + response, it.options), response_tokens=len(toks),
                think_words=sc.think_words,
            ))
        bar.update(len(chunk))
    bar.close()
    return records


# -----------------------------------------------------------------------------
# Statistics


def bootstrap(correct: np.ndarray, n_resamples=1000, seed=0):
    """Bootstrap of the mean of `correct` (one value per item: 0/1, or a mean over samples): resample the items with
    replacement n_resamples times. Returns (std, (lo, hi)): the standard deviation of the resampled means with
    ddof=1 (Efron's bootstrap standard error) and their 2.5 / 97.5 percentiles (numpy's linear interpolation)."""
    x = np.asarray(correct, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d array, got shape {x.shape}")
    if n_resamples < 2:
        raise ValueError(f"bootstrap needs n_resamples >= 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(means.std(ddof=1)), (float(lo), float(hi))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples=1000, seed=0):
    """Accuracy difference b - a on the same items (a[i], b[i]: item i's accuracy under A and B). Resampling items
    keeps each pair together, so the spread reflects only how the two disagree. Returns (mean, std, (lo, hi))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs arrays of one shape, got {a.shape} and {b.shape}")
    diff = b - a
    std, ci = bootstrap(diff, n_resamples, seed)
    return float(diff.mean()), std, ci


def majority_correct(recs):
    """The k replies of one item vote with their answer letters; unanswered replies do not vote."""
    votes = collections.Counter(r["pred"] for r in recs if r["pred"] is not None)
    # most_common keeps first-seen order among equal counts, so a tie goes to the letter given first
    return bool(votes) and votes.most_common(1)[0][0] == recs[0]["gold"]


def summarize(records, samples, n_resamples, seed):
    """The results.json numbers for one group of records (samples consecutive records per item)."""
    per_item = [records[i:i + samples] for i in range(0, len(records), samples)]
    item_acc = np.array([np.mean([r["correct"] for r in recs]) for recs in per_item])
    std, (lo, hi) = bootstrap(item_acc, n_resamples, seed)
    by_source = collections.defaultdict(list)
    for recs, acc in zip(per_item, item_acc):
        by_source[recs[0]["source"]].append(acc)
    out = dict(
        n=len(per_item),
        accuracy=float(np.mean([r["correct"] for r in records])),
        bootstrap_std=std,
        ci95=[lo, hi],
        format_rate=float(np.mean([r["format_ok"] for r in records])),
        mean_response_tokens=float(np.mean([r["response_tokens"] for r in records])),
        mean_think_words=float(np.mean([r["think_words"] for r in records])),
        patterns={p: float(np.mean([r["pattern"] == p for r in records])) for p in verifier.PATTERNS},
        by_source={s: dict(n=len(v), accuracy=float(np.mean(v))) for s, v in sorted(by_source.items())},
    )
    if samples > 1:
        out["pass_at_k"] = float(np.mean([any(r["correct"] for r in recs) for recs in per_item]))
        out["majority_accuracy"] = float(np.mean([majority_correct(recs) for recs in per_item]))
    return out


def table(results, names, samples):
    """The results as fixed-width text: one row per file and one for all, then the reply patterns of all."""
    k = f"pass@{samples}"
    head = f"{'file':<32} {'n':>6} {'dropped':>7}  {'accuracy':<15}  {'95% CI':<14}  {'format':>6}  {'mean len':>8}"
    head += f"  {k:>8}  {'majority':>8}" if samples > 1 else ""
    rows = [head, "-" * len(head)]
    for name in names + ["all"]:
        r = results[name]
        acc = f"{r['accuracy']:.3f} ± {r['bootstrap_std']:.3f}"
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        row = (f"{name[:32]:<32} {r['n']:>6} {r['dropped']:>7}  {acc:<15}  {ci:<14}  {r['format_rate']:>6.3f}  "
               f"{r['mean_response_tokens']:>8.1f}")
        row += f"  {r['pass_at_k']:>8.3f}  {r['majority_accuracy']:>8.3f}" if samples > 1 else ""
        rows.append(row)
    shares = results["all"]["patterns"]
    rows.append("patterns (all): " + ", ".join(f"{p} {shares[p]:.3f}" for p in verifier.PATTERNS))
    return "\n".join(rows)


# -----------------------------------------------------------------------------
# python eval.py --model CKPT --data FILE [FILE ...] --template T --out DIR


def fail(msg):
    raise SystemExit(f"error: {msg}")


def is_model(path):
    # a run folder has a config.json too (train.py's), but no weights beside it
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json"))


def find_model(path):
    """The HF model folder for CKPT: the folder itself, a run checkpoint's model/, or a run's latest checkpoint."""
    path = Path(path)
    if not path.is_dir():
        fail(f"--model {path}: no such folder")
    if is_model(path):
        return path
    if is_model(path / "model"):
        return path / "model"
    ckpts = sorted(p for p in (path / "checkpoints").glob("step_*") if is_model(p / "model"))
    if ckpts:
        return ckpts[-1] / "model"
    fail(f"--model {path}: not a model folder (config.json + model.safetensors), a run checkpoint (model/ holding "
         "them) or a run folder (checkpoints/step_*/model/ holding them)")


def file_names(paths):
    """results.json keys: each file's name without extension, or with its folder where two files share a name
    (medqa/test, mmlu/test); they must be distinct and not a reserved key."""
    stems = [Path(p).stem for p in paths]
    names = [s if stems.count(s) == 1 else f"{Path(p).resolve().parent.name}/{s}" for s, p in zip(stems, paths)]
    for name, p in zip(names, paths):
        if name in ("all", "model", "template", "settings"):
            fail(f"--data {p}: its name {name!r} is a results.json key; rename or symlink the file")
        if names.count(name) > 1:
            same = [str(q) for q, m in zip(paths, names) if m == name]
            fail(f"--data: files {same} share the name {name!r}, which keys results.json; rename or symlink them")
    return names


def check_template_fits(template, tokenizer, model_dir):
    # the chat markup only means something to a model whose tokenizer has its special tokens
    if template == "chat":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if tokenizer.token_to_id(t) is None]
        if missing:
            fail(f"--template chat needs the tokens {', '.join(missing)}, which {model_dir}/tokenizer.json does not "
                 "have (not a chat model's tokenizer); use --template base, direct or cot")


def read_files(paths, fmt, limit):
    """The items of each file (its first `limit`), read before the model is loaded so that bad data fails fast."""
    files = []
    for path in paths:
        try:
            items = data.load_mcqa(path, fmt)
        except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError; its message is file:line: field
            fail(str(e))
        files.append(items[:limit] if limit else items)
    return files


def default_reply_length(files, tokenizer, template, context):
    """512 new tokens, or what the context leaves after the longest prompt if that is less (but at least a quarter of
    the context: longer prompts are then dropped, and counted)."""
    prompts = [data.render(it, template) for items in files for it in items]
    longest = max(len(e.ids) for e in tokenizer.encode_batch(prompts, add_special_tokens=False))
    return min(512, max(context - longest, context // 4))


def encode_files(paths, names, files, tokenizer, template, max_prompt_len, vocab_size):
    """[(name, item, prompt length)] over all files in order, and {name: prompts dropped as too long}."""
    todo, dropped = [], {}
    for path, name, items in zip(paths, names, files):
        kept, ids = data.encode_prompts(items, tokenizer, template, max_prompt_len, where=f"{path}: ")
        top = max((max(i) for i in ids), default=0)
        if top >= vocab_size:
            fail(f"{path}: the tokenizer gives token id {top}, beyond the model's vocabulary of {vocab_size}; "
                 "the model folder's tokenizer.json does not belong to its weights")
        if not kept:
            fail(f"{path}: all {len(items)} prompts ({template} template) are longer than {max_prompt_len} tokens, "
                 "the model's context minus --max-new-tokens; lower --max-new-tokens")
        dropped[name] = len(items) - len(kept)
        todo += [(name, it, len(i)) for it, i in zip(kept, ids)]
    return todo, dropped


def write_outputs(out, records, results):
    """items.jsonl, then results.json, each written whole under a temporary name and renamed. An earlier run's
    results.json goes first: a run killed midway leaves no results.json beside another run's items."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)
    tmp = out / "items.jsonl.tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(out / "items.jsonl")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")


def parse_eval_args(argv):
    ap = argparse.ArgumentParser(description="Evaluate a model on MCQA files (see the docstring of eval.py).")
    ap.add_argument("--model", required=True, help="HF model folder, run checkpoint or run folder")
    ap.add_argument("--data", required=True, nargs="+", metavar="FILE", help="MCQA files (see data.py)")
    ap.add_argument("--template", required=True, choices=data.TEMPLATES)
    ap.add_argument("--out", required=True, help="folder for results.json and items.jsonl")
    ap.add_argument("--fmt", choices=data.FORMATS, default=None, help="data format (default: detected per file)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="reply length limit (default: 512, or what the model's context leaves after the longest "
                         "prompt if that is less, but at least a quarter of the context)")
    ap.add_argument("--batch-size", type=int, default=64, help="replies generated together, per rank")
    ap.add_argument("--samples", type=int, default=1, help="replies per item (k > 1: pass@k and majority vote)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each file")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="verifier: no text allowed before <think>")
    ap.add_argument("--min-think-words", type=int, default=0, help="verifier: minimum words inside <think>")
    ap.add_argument("--stop", default=None, metavar="TEXT",
                    help="end each reply after the first TEXT, e.g. '</answer>' for a base model that writes on "
                         "after answering (the verifier scores text after </answer> as a format failure)")
    args = ap.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        fail(f"--limit must be >= 1, got {args.limit}")
    if args.bootstrap < 2:
        fail(f"--bootstrap must be >= 2, got {args.bootstrap}")
    if args.temperature < 0:
        fail(f"--temperature must be >= 0, got {args.temperature}")
    if args.samples > 1 and args.temperature == 0:
        fail(f"--samples {args.samples} needs --temperature > 0: greedy decoding gives {args.samples} identical replies")
    return args


def setup_distributed(device="auto"):
    """(rank, world, device) from torchrun's environment; one process: (0, 1, cuda or cpu). device: auto (cuda if
    available), cuda or cpu. Joins the process group (NCCL on GPU, gloo on CPU) when there are several ranks."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device not in ("auto", "cuda", "cpu"):
        raise SystemExit(f"--device {device!r}: expected auto, cuda or cpu (under torchrun each rank takes the GPU "
                         f"of its LOCAL_RANK)")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def exit_torchrun_process():
    """Ends a torchrun worker at once, its work done and its process group left. On a loaded machine gloo's threads
    sometimes abort Python's own shutdown ("terminate called without an active exception": 2 of 30 two-rank eval runs
    here), and torchrun then reports the whole run as failed."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def evaluate(argv):
    args = parse_eval_args(argv)
    names = file_names(args.data)
    model_dir = find_model(args.model)
    out = Path(args.out)  # checked now, not after every item has been answered
    nearest = next(p for p in (out, *out.parents) if p.exists())
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        fail(f"--out {out}: {nearest} is not a writable folder")
    files = read_files(args.data, args.fmt, args.limit)
    rank, world, device = setup_distributed()
    try:
        tokenizer = M.load_tokenizer(model_dir)
        lm = M.Transformer.from_pretrained(model_dir, device=device,
                                           dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if not lm.args.eos_ids and rank == 0:
        print(f"warning: {model_dir} names no end-of-text token (eos_token_id in config.json or "
              "generation_config.json, eos_token in tokenizer_config.json): every reply runs to --max-new-tokens; "
              "--stop '</answer>' ends them at the answer", file=sys.stderr)
    check_template_fits(args.template, tokenizer, model_dir)
    if args.max_new_tokens is None:
        args.max_new_tokens = default_reply_length(files, tokenizer, args.template, lm.args.max_seq_len)
    max_prompt_len = lm.args.max_seq_len - args.max_new_tokens
    if max_prompt_len < 1:
        fail(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's context of "
             f"{lm.args.max_seq_len} tokens")
    todo, dropped = encode_files(args.data, names, files, tokenizer, args.template, max_prompt_len, lm.args.vocab_size)

    # each rank answers every world-th item, shortest prompts first so that a batch wastes little on padding
    mine = sorted(data.shard(range(len(todo)), rank, world), key=lambda i: todo[i][2])
    recs = answer_items(lm, tokenizer, [todo[i][1] for i in mine], args.template, args.max_new_tokens,
                        batch_size=args.batch_size, temperature=args.temperature, samples=args.samples,
                        seed=args.seed + rank * 1_000_003, eos_ids=lm.args.eos_ids, progress=rank == 0,
                        strict=args.strict, min_think_words=args.min_think_words, stop=args.stop)
    indexed = [(mine[j // args.samples], r) for j, r in enumerate(recs)]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, indexed)
        indexed = [x for g in gathered for x in g]
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()
    if rank != 0:
        return None
    indexed.sort(key=lambda x: (x[0], x[1]["sample"]))  # back to file order
    records = [dict(id=r["id"], file=todo[i][0], **{k: v for k, v in r.items() if k != "id"}) for i, r in indexed]

    settings = {k: v for k, v in vars(args).items() if k not in ("model", "template", "out")}
    settings.update(world_size=world, device=device.type, dtype=str(next(lm.parameters()).dtype).removeprefix("torch."))
    results = dict(model=str(model_dir), template=args.template, settings=settings)
    for name in names + ["all"]:
        group = [r for r in records if name in ("all", r["file"])]
        results[name] = summarize(group, args.samples, args.bootstrap, args.seed)
        results[name]["dropped"] = sum(dropped.values()) if name == "all" else dropped[name]
    write_outputs(out, records, results)
    print(f"model {model_dir}, template {args.template}, {args.samples} sample(s) per item, "
          f"temperature {args.temperature}")
    print(table(results, names, args.samples))
    print(f"wrote {out / 'results.json'} and {out / 'items.jsonl'}")
    return results


# -----------------------------------------------------------------------------
# python eval.py compare A/results.json B/results.json


def read_jsonl(path, torn_tail=False):
    """torn_tail: a last line that is not JSON is dropped (a log that a killed run was appending to, which
    train.py --resume drops too)."""
    lines = Path(path).read_text().splitlines()
    rows = []
    for line, raw in enumerate(lines, start=1):
        if raw.strip():
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError as e:
                if torn_tail and not any(r.strip() for r in lines[line:]):
                    print(f"{path}:{line}: skipped a last line cut short (a killed run)", file=sys.stderr)
                    continue
                fail(f"{path}:{line}: not valid JSON ({e.msg}, column {e.colno})")
    return rows


def item_accuracy(results_path):
    """{(file, id): mean correctness over the item's samples} and {(file, id): gold letter}, from the items.jsonl next
    to results.json."""
    path = Path(results_path)
    if path.is_dir():
        fail(f"{path}: a folder; expected the results.json that eval.py wrote")
    if not path.is_file():
        fail(f"{path}: no such file")
    items = path.parent / "items.jsonl"
    if not items.is_file():
        fail(f"{items}: no such file (compare reads the items.jsonl that eval.py writes next to results.json)")
    scores, gold, seen = collections.defaultdict(list), {}, set()
    for n, r in enumerate(read_jsonl(items), start=1):
        missing = [k for k in ("file", "id", "sample", "correct", "gold") if k not in r]
        if missing:
            fail(f"{items}:{n}: missing {', '.join(missing)}")
        if r["correct"] not in (True, False):  # also 0 and 1
            fail(f"{items}:{n}: correct: expected true or false, got {r['correct']!r}")
        key = (r["file"], r["id"], r["sample"])
        if key in seen:
            fail(f"{items}:{n}: item {r['file']}/{r['id']} sample {r['sample']} appears twice; ids must be unique "
                 "within a file to pair items")
        seen.add(key)
        scores[(r["file"], r["id"])].append(float(r["correct"]))
        gold[(r["file"], r["id"])] = r["gold"]
    return {k: float(np.mean(v)) for k, v in scores.items()}, gold


def compare(argv):
    ap = argparse.ArgumentParser(prog="eval.py compare",
                                 description="Paired bootstrap of accuracy(B) - accuracy(A) on the items both hold.")
    ap.add_argument("a", metavar="A/results.json")
    ap.add_argument("b", metavar="B/results.json")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.bootstrap < 2:
        fail(f"--bootstrap must be >= 2, got {args.bootstrap}")
    (acc_a, gold_a), (acc_b, gold_b) = item_accuracy(args.a), item_accuracy(args.b)
    shared = sorted(set(acc_a) & set(acc_b))
    if not shared:
        fail(f"{args.a} and {args.b} share no items (matched by file name and id)")
    differ = [k for k in shared if gold_a[k] != gold_b[k]]
    if differ:  # ids like "test:17" are line numbers: another file of the same name pairs unrelated questions
        f, i = differ[0]
        fail(f"{len(differ)} of {len(shared)} items paired by file name and id have different gold answers (e.g. "
             f"{f}/{i}: {gold_a[differ[0]]} in A, {gold_b[differ[0]]} in B); A and B were not run on the same data")
    a = np.array([acc_a[k] for k in shared])
    b = np.array([acc_b[k] for k in shared])
    mean, std, (lo, hi) = paired_bootstrap(a, b, args.bootstrap, args.seed)
    print(f"A: {args.a}  accuracy {a.mean():.4f} on the shared items ({len(acc_a)} evaluated)")
    print(f"B: {args.b}  accuracy {b.mean():.4f} on the shared items ({len(acc_b)} evaluated)")
    print(f"B - A: {mean:+.4f} ± {std:.4f} (bootstrap std), 95% CI [{lo:+.4f}, {hi:+.4f}], n = {len(shared)} shared items")
    return dict(diff=mean, std=std, ci95=[lo, hi], n=len(shared))


# -----------------------------------------------------------------------------
# python eval.py report RUN_DIR

PHASES = ("early", "middle", "late")
# (file, metric keys): one panel per key the run logged; a figure with none of them is not drawn
FIGURES = [
    ("reward.png", ["reward_mean", "accuracy", "format_rate"]),
    ("length.png", ["response_len", "think_words"]),
    ("loss.png", ["sft_loss", "policy_loss", "value_loss", "kl", "entropy"]),
]
# (key, how "best" is picked): higher is better for the rewards, lower for the SFT loss; None: no best
SUMMARY = [("reward_mean", max), ("accuracy", max), ("format_rate", max), ("response_len", None),
           ("think_words", None), ("kl", None), ("sft_loss", min)]


def plot(metrics, folder):
    """Writes the PNGs into folder; returns their names, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so the report has no plots; to get them: pip install matplotlib")
        return None
    steps = [m["step"] for m in metrics]
    written = []
    for name, keys in FIGURES:
        keys = [k for k in keys if any(k in m for m in metrics)]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
        for ax, k in zip(axes[0], keys):
            xs = [m["step"] for m in metrics if k in m]
            ax.plot(xs, [m[k] for m in metrics if k in m], marker="." if len(xs) < 50 else None)
            ax.set_title(k)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(name)
    keys = [f"pattern_{p}" for p in verifier.PATTERNS]
    if all(k in m for m in metrics for k in keys):
        # the share of each reply pattern over training, stacked to 1 (cf. Figure 2 of the Med-RLVR paper)
        fig, ax = plt.subplots(figsize=(8, 4.2))
        ax.stackplot(steps, *[[m[k] for m in metrics] for k in keys], labels=verifier.PATTERNS, alpha=0.85)
        if len(steps) > 1:
            ax.set_xlim(steps[0], steps[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_ylabel("share of replies")
        ax.set_title("reply patterns")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "patterns.png", dpi=100)
        plt.close(fig)
        written.append("patterns.png")
    return written


def phase_of(step, first, last):
    """early / middle / late: thirds of the steps first..last."""
    return PHASES[min(2, max(0, (step - first) * 3 // (last - first + 1)))]


def fence(text):
    # a code fence longer than any backtick run inside the text, so a reply cannot close it
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def report_markdown(run, metrics, samples, plots):
    first, last = metrics[0]["step"], metrics[-1]["step"]
    md = [f"# Run report: {run}", "", f"{len(metrics)} logged steps, {first} to {last}.", ""]
    rows = [(k, best) for k, best in SUMMARY if any(k in m for m in metrics)]
    rows += [(f"pattern_{p}", None) for p in verifier.PATTERNS if any(f"pattern_{p}" in m for m in metrics)]
    if rows:
        md += ["| metric | first | last | best (step) |", "| --- | ---: | ---: | ---: |"]
        for k, best in rows:
            have = [m for m in metrics if k in m]
            b = "–"
            if best is not None:
                top = best(have, key=lambda m: m[k])  # the earliest step on a tie
                b = f"{top[k]:.4g} ({top['step']})"
            md.append(f"| {k} | {have[0][k]:.4g} | {have[-1][k]:.4g} | {b} |")
        md.append("")
    final = run / "final.json"
    if final.is_file():
        md += ["## final.json", "", "```json", final.read_text().strip(), "```", ""]
    if plots is None:
        md += ["(No plots: matplotlib is not installed; `pip install matplotlib` and rerun `python eval.py report`.)",
               ""]
    elif plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if samples:
        md += ["## Example replies", "",
               "One reply per pattern and phase (the steps split into thirds), the first one logged in samples.jsonl.",
               ""]
        for phase in PHASES:
            in_phase = [s for s in samples if phase_of(s["step"], first, last) == phase]
            if not in_phase:
                continue
            md += [f"### {phase}", ""]
            for p in verifier.PATTERNS:
                s = next((s for s in in_phase if s.get("pattern") == p), None)
                if s is None:
                    continue
                f = fence(s["response"])
                md += [f"**{p}** (step {s['step']}, gold {s.get('gold')}, pred {s.get('pred')}, "
                       f"reward {s.get('reward')})", "", f, s["response"], f, ""]
    return "\n".join(md)


def report(argv):
    ap = argparse.ArgumentParser(prog="eval.py report",
                                 description="Plots and report.md from a run's metrics.jsonl and samples.jsonl.")
    ap.add_argument("run", metavar="RUN_DIR")
    args = ap.parse_args(argv)
    run = Path(args.run)
    if not (run / "metrics.jsonl").is_file():
        fail(f"{run}: no metrics.jsonl (expected a run folder written by train.py)")
    metrics = read_jsonl(run / "metrics.jsonl", torn_tail=True)
    if not metrics:
        fail(f"{run / 'metrics.jsonl'}: empty, no step was logged")
    for n, m in enumerate(metrics, start=1):
        if not isinstance(m.get("step"), int):
            fail(f"{run / 'metrics.jsonl'}:{n}: step: expected an integer")
    metrics.sort(key=lambda m: m["step"])
    samples = read_jsonl(run / "samples.jsonl", torn_tail=True) if (run / "samples.jsonl").is_file() else []
    for n, s in enumerate(samples, start=1):
        if not isinstance(s.get("step"), int) or not isinstance(s.get("response"), str):
            fail(f"{run / 'samples.jsonl'}:{n}: expected an integer step and a string response")
    folder = run / "report"
    folder.mkdir(exist_ok=True)
    for name in [f for f, _ in FIGURES] + ["patterns.png"]:  # an earlier report's plots would pass for this one's
        (folder / name).unlink(missing_ok=True)
    plots = plot(metrics, folder)
    (folder / "report.md").write_text(report_markdown(run, metrics, samples, plots))
    print(f"wrote {folder / 'report.md'}" + (f" and {len(plots)} plots" if plots else ""))
    return folder


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare(argv[1:])
    if argv[:1] == ["report"]:
        return report(argv[1:])
    return evaluate(argv)


if __name__ == "__main__":
    main()
    exit_torchrun_process()
