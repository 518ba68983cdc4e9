"""Benchmark: SASRec training examples/s of tfrec_proxy vs RecBole 1.2.1 and plain TFRS.

    python pipelines/bench_sasrec_speed.py                    # ML-1M (../shared/data)
    python pipelines/bench_sasrec_speed.py --recbole-python /tmp/recbole/bin/python
    python pipelines/bench_sasrec_speed.py --data synthetic --warmup 2 --steps 3 \\
        --repeats 2 --results /tmp/sasrec_speed.jsonl        # smoke run
    python pipelines/bench_sasrec_speed.py --summarize        # table of past runs

Contenders at equal dims (d = 64, histories of 50, Adam at --learning-rate):

* ours: `build_model` with encoder "sasrec", item tower "shared", 2 blocks x 1 head
  (SASRec's ML-1M setting), dropout 0.2, loss "full-softmax" (CE over every item, as
  RecBole's CE), all-positions training on `data.split.train_sequences` (per-user split);
* plain TFRS: `bench_train_speed.PlainTfrsModel` (masked GRU(64) query tower over the
  history, id-embedding candidate tower, `tfrs.tasks.Retrieval` in-batch softmax with
  logQ) on the per-prefix examples `data.split.train`, 1,024 examples per step;
* RecBole 1.2.1 SASRec (optional, `--recbole-python`; a worker subprocess): hidden_size
  64, inner_size `--recbole-inner-size` (64 = ours; RecBole's default 256), n_layers 2,
  n_heads 1, dropout 0.2, relu, MAX_ITEM_LIST_LENGTH 50, loss_type CE,
  train_neg_sample_args None, train_batch_size 1024, leave-one-out (LS, time order), on
  `ml-1m.txt` (`user item` lines in time order, written as atomic file `ml1m.inter` into
  --recbole-dir, default a new /tmp folder outside the repo; synthetic data likewise).

Examples are target positions, counted as RecBole counts them: its SASRec augments each
user sequence into prefixes, one example per prefix (target = the next item), so its
batch of 1024 is 1,024 targets. Ours encodes whole sequences once with a target at each
position: a step takes `sequences_per_batch(train_sequences, 1024)` sequences (about
1,024 targets) and its examples are the non-zero `targets` entries it trained on.

Timing (`time.perf_counter`): each contender runs --warmup untimed steps (tf.function
tracing, optimizer slots; `--jit-compile` XLA-compiles both TF steps), then --repeats
rounds of --steps steps, the contenders interleaved round by round (order rotating) so
machine noise hits all alike. Batches (--steps per contender, shuffled, from the
library's datasets or RecBole's train DataLoader) are held in memory, so rounds time
train steps only (forward, loss, backward, Adam), no input pipeline. Printed: a table
of examples/s min / median over rounds and `ours / this` (medians; goals >= 5 vs RecBole,
>= 0.7 vs plain TFRS); without RecBole the issue's 650 examples/s stands in, labelled
"quoted, not measured". R@10 is not measured here. Each invocation appends one JSON
line (settings, per-round rates, `os.cpu_count()`, thread variables) to --results, also
when interrupted (`"complete": false`, the rounds so far); `--summarize` tabulates them.
torch gets TF_NUM_INTRAOP_THREADS threads (default `os.cpu_count()`), as TF does.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import tfrec_proxy  # noqa: F401  (TensorFlow with Keras 2)
from tfrec_proxy._tf import tf
from tfrec_proxy.config import RunConfig
from tfrec_proxy.data import (make_dataset, make_sequence_dataset, prepare_data,
                              sequences_per_batch)
from tfrec_proxy.data.prepare import resolve_data_path, trained_positions
from tfrec_proxy.models import build_model

from bench_train_speed import PlainTfrsModel  # the pipelines folder is on sys.path
from methods import append_result, markdown_table, read_results

RESULTS = Path(__file__).resolve().parent / "results" / "sasrec_speed.jsonl"
RECBOLE_QUOTED = 650.0  # the figure for RecBole 1.2.1 on the 2-core CPU
OURS, PLAIN, RECBOLE = "ours (SASRec, all positions)", "plain TFRS (GRU)", "RecBole 1.2.1 SASRec"

# The start of every RecBole worker (run in the RecBole interpreter): argv =
# interactions file (`user item` lines in time order), work dir, settings JSON. Writes
# the atomic file, builds RecBole's SASRec at the settings, its leave-one-out
# train/valid/test loaders (full sort: the user's other items masked) and an Adam.
RECBOLE_SETUP = r'''
import json, os, sys, time
source, work, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.argv = sys.argv[:1]  # RecBole's Config parses the command line
os.makedirs(os.path.join(work, "ml1m"), exist_ok=True)
os.chdir(work)  # RecBole writes log/ and saved/ under the working directory
inter = os.path.join(work, "ml1m", "ml1m.inter")
with open(source) as lines, open(inter, "w") as out:
    out.write("user_id:token\titem_id:token\ttimestamp:float\n")
    for number, line in enumerate(lines):
        parts = line.split()
        if len(parts) >= 2:
            out.write(f"{parts[0]}\t{parts[1]}\t{number}\n")
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.utils import init_seed
torch.set_num_threads(settings["threads"])
d = settings["dim"]
config = Config(model="SASRec", dataset="ml1m", config_dict={
    "data_path": work, "checkpoint_dir": os.path.join(work, "saved"),
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "hidden_size": d, "inner_size": settings["inner_size"], "n_layers": 2, "n_heads": 1,
    "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "relu",
    "MAX_ITEM_LIST_LENGTH": settings["max_len"], "loss_type": "CE",
    "train_neg_sample_args": None, "train_batch_size": settings["batch_size"],
    "learning_rate": settings["learning_rate"], "use_gpu": False, "seed": 0,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                  "group_by": "user"},
    "metrics": ["Recall", "NDCG"], "topk": [10, 20], "valid_metric": "NDCG@10",
    "show_progress": False, "save_dataset": False, "save_dataloaders": False})
init_seed(config["seed"], config["reproducibility"])
train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
model = SASRec(config, train_data.dataset).to(config["device"])
optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
'''
# The speed worker: prints "@@READY {...}" after the warm-up, then for each "run"
# line on stdin trains the held batches once and prints "@@RATE examples seconds";
# exits on "quit" or end of input.
RECBOLE_WORKER = RECBOLE_SETUP + r'''
batches = []
while len(batches) < settings["steps"]:  # the first --steps batches, epochs cycled
    for interaction in train_data:
        batches.append(interaction.to(config["device"]))
        if len(batches) == settings["steps"]:
            break
def step(interaction):  # RecBole's Trainer._train_epoch, without its bookkeeping
    optimizer.zero_grad()
    loss = model.calculate_loss(interaction)
    loss.backward()
    optimizer.step()
    return loss
model.train()
for index in range(settings["warmup"]):
    step(batches[index % len(batches)])
info = {key: config[key] for key in ("hidden_size", "inner_size", "n_layers", "n_heads",
        "loss_type", "MAX_ITEM_LIST_LENGTH", "train_batch_size", "hidden_act")}
print("@@READY " + json.dumps({**info, "items": model.n_items, "torch": torch.__version__,
      "train_examples": len(train_data.dataset), "threads": torch.get_num_threads(),
      "examples_per_step": sum(len(b) for b in batches) / len(batches)}), flush=True)
for command in sys.stdin:
    if command.strip() != "run":
        break
    start = time.perf_counter()
    for interaction in batches:
        loss = step(interaction)
    loss.item()
    print(f"@@RATE {sum(map(len, batches))} {time.perf_counter() - start}", flush=True)
'''


class RecBoleWorker:
    """The RecBole worker subprocess (`RECBOLE_WORKER`), one timed round per `run()`."""

    def __init__(self, python: str, source: Path, work: Path, settings: Dict) -> None:
        self.log = work / "worker.log"
        work.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [python, "-c", RECBOLE_WORKER, str(source), str(work), json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"),
            text=True, cwd=work)

    def _reply(self, tag: str) -> Optional[str]:
        for line in self.process.stdout:
            if line.startswith(tag):
                return line[len(tag):].strip()
        return None

    def ready(self) -> Optional[Dict]:
        """The worker's settings once warmed up; None if it died."""
        reply = self._reply("@@READY ")
        return json.loads(reply) if reply else None

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        reply = self._reply("@@RATE ")
        if reply is None:
            raise RuntimeError(f"RecBole worker stopped; see {self.log}")
        examples, seconds = reply.split()
        return float(examples) / float(seconds)

    def close(self) -> str:
        """Stops the worker (killed if it does not end within 10 s); its log's tail."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        return self.log.read_text()[-2000:]


def tf_contender(model, batches: List[Dict], examples: float, jit: bool, warmup: int):
    """A `round()` that runs `model.train_step` (tf.function) over `batches` once and
    returns examples/s; the warm-up steps run here, before any timing."""
    step = tf.function(model.train_step, jit_compile=jit)
    for index in range(warmup):
        step(batches[index % len(batches)])["loss"].numpy()

    def round_() -> float:
        start = time.perf_counter()
        for batch in batches:
            logs = step(batch)
        logs["loss"].numpy()  # the last step has finished
        return examples / (time.perf_counter() - start)
    return round_


def held_batches(dataset, steps: int) -> List[Dict]:
    return [dict(batch) for batch in dataset.repeat().take(steps)]


def recbole_source(args, data, work: Path) -> Path:
    """The `user item` lines (per user in time order) RecBole reads: ML-1M's
    `ml-1m.txt`, or the synthetic interactions written into the work dir."""
    if args.data == "ml1m":
        source = resolve_data_path(args.data_path)
        return source / "ml-1m.txt" if source.is_dir() else source
    source = work / "synthetic.txt"
    frame = data.interactions.sort_values(["user_id", "timestamp"], kind="stable")
    source.write_text("".join(f"{u} {i}\n" for u, i in zip(frame["user_id"],
                                                            frame["item_id"])))
    return source


def start_recbole(args, data, threads: int) -> RecBoleWorker:
    """The RecBole worker on `recbole_source`'s interactions."""
    work = Path(args.recbole_dir or tempfile.mkdtemp(prefix="sasrec_speed_recbole_"))
    work.mkdir(parents=True, exist_ok=True)
    source = recbole_source(args, data, work)
    return RecBoleWorker(args.recbole_python, source, work, {
        "dim": args.dim, "inner_size": args.recbole_inner_size, "max_len": args.max_len,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "steps": args.steps, "warmup": args.warmup, "threads": threads})


def summarize(path: Path) -> None:
    """One table row per contender and recorded invocation."""
    rows = []
    for record in read_results(path):
        rates = {name: values for name, values in record["rates"].items() if values}
        ours = statistics.median(rates[OURS]) if OURS in rates else float("nan")
        rows += [[record["time"], record["data"], name, len(values),
                  f"{min(values):,.0f} / {statistics.median(values):,.0f}",
                  f"{ours / statistics.median(values):.2f}"] for name, values in rates.items()]
    print(markdown_table(["time", "data", "contender", "rounds", "examples/s min / median",
                          "ours / this"], rows))


def report(rates: Dict[str, List[float]]) -> None:
    median = {name: statistics.median(values) for name, values in rates.items() if values}
    rows = [[name, f"{min(rates[name]):,.0f} / {value:,.0f}",
             f"{median[OURS] / value:.2f}"] for name, value in median.items()]
    recbole = median.get(RECBOLE)
    if recbole is None:
        rows.append([f"{RECBOLE} (quoted, not measured)", f"{RECBOLE_QUOTED:,.0f}",
                     f"{median[OURS] / RECBOLE_QUOTED:.2f}"])
    print(markdown_table(["contender", "examples/s min / median", "ours / this (median)"],
                         rows))
    print(f"ours / RecBole: {median[OURS] / (recbole or RECBOLE_QUOTED):.2f} (goal >= 5; "
          f"{'measured' if recbole else 'RecBole not measured: quoted 650 examples/s'})")
    print(f"ours / plain TFRS: {median[OURS] / median[PLAIN]:.2f} (goal >= 0.7)")


def add_recbole_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The settings every SASRec-vs-RecBole script shares (this one and
    `bench_recbole_accuracy.py`): data, d, L, targets per step, learning rate, the
    RecBole interpreter and work folder, the results file (default `results`) and
    `--summarize`."""
    parser.add_argument("--data", choices=("ml1m", "synthetic"), default="ml1m",
                        help="ML-1M (--data-path, default ../shared/data/ml-1m) or the "
                             "default synthetic data (smoke runs)")
    parser.add_argument("--data-path", help="ML-1M folder or ml-1m.txt")
    parser.add_argument("--dim", type=int, default=64, help="d of every contender")
    parser.add_argument("--max-len", type=int, default=50, help="history length L")
    parser.add_argument("--batch-size", type=int, default=1024, help="targets per step")
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--recbole-python", help="interpreter with recbole==1.2.1 + torch")
    parser.add_argument("--recbole-dir", help="RecBole work dir (default: a new /tmp dir)")
    parser.add_argument("--results", default=str(results), help="JSON lines file")
    parser.add_argument("--summarize", action="store_true", help="print --results, exit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recbole_arguments(parser, RESULTS)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per contender")
    parser.add_argument("--jit-compile", action="store_true", help="XLA TF train steps")
    parser.add_argument("--recbole-inner-size", type=int, default=64,
                        help="RecBole's feed-forward width (ours: d; RecBole default 256)")
    args = parser.parse_args()
    if args.summarize:
        return summarize(Path(args.results))

    config = RunConfig()
    config.data.max_len, config.data.split = args.max_len, "per-user"
    if args.data == "ml1m":
        config.data.source, config.data.path = "file", args.data_path
    model = config.model
    model.encoder, model.item_tower, model.item_hidden_units = "sasrec", "shared", (args.dim,)
    model.embedding_dim, model.num_layers, model.num_heads = args.dim, 2, 1
    model.dropout, model.loss, model.all_positions = 0.2, "full-softmax", True
    threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or os.cpu_count())
    data = prepare_data(config.data)
    # RecBole starts first: it builds its dataset while the TF models warm up.
    worker = start_recbole(args, data, threads) if args.recbole_python else None
    rates: Dict[str, List[float]] = {}
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "data": args.data, "summary": data.summary(), **{
                  key: getattr(args, key) for key in (
                      "dim", "max_len", "batch_size", "steps", "warmup", "repeats",
                      "jit_compile", "learning_rate", "recbole_inner_size")},
              "recbole": None, "recbole_quoted": RECBOLE_QUOTED, "cpu_count": os.cpu_count(),
              "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS"),
              "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS"),
              "rates": rates, "complete": False}
    try:
        sequences = data.split.train_sequences
        per_batch = sequences_per_batch(sequences, args.batch_size)
        tf.keras.utils.set_random_seed(0)
        ours = build_model(model, data.vocab.size, args.max_len, data.sampling_probability,
                           trained_positions=trained_positions(config.data))
        ours.compile(optimizer=tf.keras.optimizers.Adam(args.learning_rate))
        batches = held_batches(make_sequence_dataset(sequences, per_batch, shuffle=True,
                                                     drop_remainder=True), args.steps)
        targets = float(sum(int(tf.math.count_nonzero(b["targets"])) for b in batches))
        rounds = {OURS: tf_contender(ours, batches, targets, args.jit_compile, args.warmup)}
        plain = PlainTfrsModel(data.vocab.size, args.dim, data.sampling_probability)
        plain.compile(optimizer=tf.keras.optimizers.Adam(args.learning_rate))
        batches = held_batches(make_dataset(data.split.train, args.batch_size, shuffle=True,
                                            drop_remainder=True), args.steps)
        rounds[PLAIN] = tf_contender(plain, batches, float(args.steps * args.batch_size),
                                     args.jit_compile, args.warmup)
        if worker is not None:
            record["recbole"] = worker.ready()
            if record["recbole"] is None:
                print(f"RecBole did not start; log tail:\n{worker.close()}", flush=True)
            else:
                rounds[RECBOLE] = worker.run
        record.update(ours_sequences_per_step=per_batch,
                      ours_targets_per_step=targets / args.steps)
        print(f"data: {args.data} {data.summary()}; ours {per_batch} sequences/step "
              f"({targets / args.steps:.0f} targets), others {args.batch_size} examples/"
              f"step; d={args.dim}, L={args.max_len}; {args.warmup} warm-up + {args.steps} "
              f"steps x {args.repeats} rounds; {threads} threads; RecBole "
              f"{record['recbole'] or 'not measured'}", flush=True)
        names = list(rounds)
        rates.update({name: [] for name in names})
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                try:
                    rates[name].append(rounds[name]())
                except RuntimeError as error:  # the RecBole worker died mid-run
                    print(f"{name} dropped: {error}", flush=True)
                    names.remove(name)
        record["complete"] = True
    finally:
        if worker is not None:
            worker.close()
        if any(rates.values()):
            append_result(args.results, record)
    report(rates)
    print(f"appended to {args.results}" + (f"; RecBole work dir {worker.log.parent}"
                                           if worker is not None else ""))


if __name__ == "__main__":
    main()
