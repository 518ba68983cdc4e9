"""Issue 17 diagnostic: the FELRec authors' own code on our synthetic chronological split.

Our FELRec-Q stays at the loss of chance on the synthetic data (BENCHMARKS, "FELRec").
This script asks whether the reference implementation (github.com/kweimann/FELRec,
PyTorch) does the same on the same interactions, at the same sizes: if it learns, our
port has a defect; if it does not, the method needs more than this data and budget.
It imports the reference's classes (`trainer/FELRec.py`: `FELRecQ`, `Encoder`,
`SessionDataset`, `train_step_Q`, `eval_step`; `reclib.optim.train_epoch`) and runs
the loop of its `main()` (reset the cache each epoch, train in time order, validate,
keep the best epoch, test with the cache kept), with its SGD + cosine schedule or Adam.

Two steps, two environments (the reference needs torch, which this project does not):

    python pipelines/felrec_reference.py export /tmp/felrec_split.tsv
    /path/to/torch-venv/bin/python pipelines/felrec_reference.py run /tmp/felrec_split.tsv \
        --reference /path/to/FELRec --epochs 5 --optimizer adam --lr 1e-3

`export` writes the time-ordered interactions of `pipelines/configs/felrec_synthetic.json`'s
split (user and item indices, split, partition). `run` reports, per epoch, the
training loss (chance = 2 ln(K + 1)), the mean pairwise cosine of the cached user and
item vectors (1 = collapsed) and the validation normalised rank; then test normalised
rank over all existing items (the reference's metric; 0 best, 0.5 chance) and HR@10
against 100 sampled items, per partition. `--no-reset` keeps the cache across epochs (a diagnostic, not the paper's
training). It appends a JSON line to
`pipelines/results/felrec_reference.jsonl`. Note the reference's test rank is over the
whole catalogue, ours (`repro_felrec.py`) against 100 sampled negatives.
"""

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTITIONS = ("observed", "new_users", "new_items")


def export(path: str, config_path: str) -> None:
    sys.path.insert(0, str(HERE.parent))
    from tfrec_proxy.config import RunConfig
    from tfrec_proxy.data.felrec_data import prepare_chronological

    config = RunConfig.from_json(config_path)
    split = prepare_chronological(config.data, history_len=config.model.felrec.history_len).split
    frame = split.interactions[["user_index", "item_index", "split", "partition"]].rename(
        columns={"user_index": "user", "item_index": "item"})
    frame.to_csv(path, sep="\t", index=False)
    print(f"wrote {len(frame)} interactions ({split.num_train} train) to {path}")


def _spread(vectors) -> float:
    """`tfrec_proxy.felrec.mean_pairwise_cosine` on a torch tensor (that module needs
    TensorFlow, which the torch venv lacks); zero rows count as cosine 0, as there."""
    import torch

    units = torch.nn.functional.normalize(vectors.double(), dim=1)
    n = len(units)
    return float(((units.sum(0) ** 2).sum() - (units * units).sum()) / (n * (n - 1)))


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.reference)
    import numpy as np
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader, Subset

    import reclib
    from trainer import FELRec as ref
    from trainer import GRU4Rec, SASRec

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = pd.read_csv(args.split, sep="\t")
    data["user"] += 1  # the reference keeps index 0 for padding
    data["item"] += 1
    train_rows = np.flatnonzero(data["split"] == "train")
    train_rows = train_rows[len(train_rows) % args.batch_size:]  # its divisible_by
    val_rows = np.flatnonzero(data["split"] == "validation")
    test_rows = np.flatnonzero(data["split"] == "test")

    def sessions(owner: str, other: str):
        return SASRec.BidirectionalMaskedSessionDataset(GRU4Rec.SessionDataset(
            data, session_len=args.history_len, user_col=owner, item_col=other))

    dataset = ref.SessionDataset(sessions("user", "item"), sessions("item", "user"))
    loaders = {name: DataLoader(Subset(dataset, rows), batch_size=args.batch_size)
               for name, rows in (("train", train_rows), ("val", val_rows),
                                  ("test", test_rows))}
    encoder = ref.Encoder(num_layers=args.layers, num_heads=args.heads, d_model=args.dim,
                          d_ff=2 * args.dim, dropout=args.dropout)
    model = ref.FELRecQ(encoder=encoder, num_users=int(data["user"].max()) + 1,
                        num_items=int(data["item"].max()) + 1, K=args.queue_size,
                        T=args.temperature)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = reclib.optim.CosineLRSchedule(optimizer=optimizer, steps=args.epochs,
                                             warmup_steps=args.warmup, eta_min=1e-7) \
        if args.schedule == "cosine" else None
    seen_users = np.unique(data["user"].to_numpy()[train_rows])
    seen_items = np.unique(data["item"].to_numpy()[train_rows])
    epochs, best, start = [], None, time.time()
    for epoch in range(args.epochs):
        if schedule is not None:
            schedule.step()
        if not args.no_reset:  # the paper: every epoch starts from an empty cache
            model.reset_users()
            model.reset_items()
        meters = reclib.optim.train_epoch(model=model, optimizer=optimizer,
                                          train_step=ref.train_step_Q(),
                                          dataloader=loaders["train"])
        loss = float(meters[2].value)  # LossMeter: the epoch's mean training loss
        spread = {"user": _spread(model.user_embeddings[seen_users]),
                  "item": _spread(model.item_embeddings[seen_items])}
        # A fresh mask each epoch: the reference's eval_step adds items to it.
        mask = ref.create_mask(index=seen_items, size=model.num_items)
        _, (ranks,) = reclib.optim.eval_epoch(
            model=model, metrics=[reclib.metrics.normalized_rank],
            eval_step=ref.eval_step(existing_items_mask=mask, ns=args.val_negatives),
            dataloader=loaders["val"])
        rank = ranks.mean().item()
        record = {"epoch": epoch + 1, "loss": round(loss, 4), "val_rank": round(rank, 4),
                  "cache_user_cosine": round(spread["user"], 4),
                  "cache_item_cosine": round(spread["item"], 4),
                  "seconds": round(time.time() - start, 1)}
        epochs.append(record)
        print(record, flush=True)
        score = min(rank, 1 - rank)
        if best is None or score < best[0]:
            best = (score, rank <= 1 - rank, copy.deepcopy(model.state_dict()), epoch + 1)
    _, descending, state, best_epoch = best
    model.load_state_dict(state)
    mask = ref.create_mask(index=np.unique(data["item"].to_numpy()[
        np.concatenate([train_rows, val_rows])]), size=model.num_items)
    generator = torch.Generator().manual_seed(args.seed)
    event_ids, (ranks, hits) = reclib.optim.eval_epoch(
        model=model,
        metrics=[lambda s, t: reclib.metrics.normalized_rank(s, t, descending=descending),
                 lambda s, t: reclib.metrics.HR(*reclib.utils.draw_samples(
                     s, t, ns=100, generator=generator), k=10, descending=descending)],
        eval_step=ref.eval_step(existing_items_mask=mask), dataloader=loaders["test"])
    partition = data["partition"].to_numpy()[event_ids.numpy()]
    ranks, hits = ranks.numpy(), hits.float().numpy()
    metrics = {"total/rank": float(ranks.mean()), "total/hr@10": float(hits.mean())}
    for name in PARTITIONS:
        rows = partition == name
        metrics.update({f"{name}/count": int(rows.sum()),
                        f"{name}/rank": float(ranks[rows].mean()),
                        f"{name}/hr@10": float(hits[rows].mean())})
    result = {"method": f"reference_felrec_q_{args.optimizer}_{args.schedule}"
              + ("_no_reset" if args.no_reset else ""),
              "split_file": Path(args.split).name,
              "seed": args.seed, "settings": {k: v for k, v in vars(args).items()
                                              if k not in ("command", "split", "reference",
                                                           "results")},
              "chance_loss": round(2 * math.log(args.queue_size + 1), 4),
              "best_epoch": best_epoch, "descending": bool(descending), "epochs": epochs,
              "metrics": metrics, "seconds": round(time.time() - start, 1)}
    print(json.dumps(metrics, indent=1))
    with open(args.results, "a") as handle:
        handle.write(json.dumps(result, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="write the split (this project's venv)")
    exporter.add_argument("path")
    exporter.add_argument("--config", default=str(HERE / "configs" / "felrec_synthetic.json"))
    runner = commands.add_parser("run", help="train the reference FELRec-Q (torch venv)")
    runner.add_argument("split")
    runner.add_argument("--reference", required=True, help="checkout of kweimann/FELRec")
    runner.add_argument("--results", default=str(HERE / "results" / "felrec_reference.jsonl"))
    runner.add_argument("--epochs", type=int, default=5)
    runner.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
    runner.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    runner.add_argument("--warmup", type=int, default=0)
    runner.add_argument("--lr", type=float, default=1e-3)
    runner.add_argument("--dim", type=int, default=64)
    runner.add_argument("--layers", type=int, default=2)
    runner.add_argument("--heads", type=int, default=4)
    runner.add_argument("--dropout", type=float, default=0.1)
    runner.add_argument("--history-len", type=int, default=32)
    runner.add_argument("--queue-size", type=int, default=4096)
    runner.add_argument("--temperature", type=float, default=0.07)
    runner.add_argument("--batch-size", type=int, default=256)
    runner.add_argument("--val-negatives", type=int, default=16384)
    runner.add_argument("--threads", type=int, default=1)
    runner.add_argument("--seed", type=int, default=0)
    runner.add_argument("--no-reset", action="store_true",
                        help="diagnostic: keep the cache across epochs (the paper empties it)")
    args = parser.parse_args()
    if args.command == "export":
        export(args.path, args.config)
    else:
        run(args)


if __name__ == "__main__":
    main()
