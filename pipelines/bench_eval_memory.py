"""Peak memory of embedding evaluation queries: a d = 256, 4-head, 3-block SASRec (or
RAM-u) on the ML-1M per-user split (L = 200) embeds 4,096 validation histories with
`RetrievalModel.query_embeddings`, with a given number of histories per forward pass
or the library's default (`models.eval_batch_size`). Prints the process's peak RSS
before and after, and the time. Run each setting in its own process:

    python pipelines/bench_eval_memory.py --batch-size 4096
    python pipelines/bench_eval_memory.py            # the default
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfrec_proxy.config import RunConfig  # noqa: E402
from tfrec_proxy.data import prepare_data  # noqa: E402
from tfrec_proxy.models import build_model, eval_batch_size  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="histories per pass (default: the library's)")
    parser.add_argument("--encoder", default="sasrec", choices=("sasrec", "ram-u"))
    parser.add_argument("--histories", type=int, default=4096)
    parser.add_argument("--data-path", default=None, help="default: ../shared/data ML-1M")
    args = parser.parse_args(argv)
    config = RunConfig.from_json(HERE / "configs" / "ml1m_sasrec.json")
    if args.data_path:
        config.data.path = args.data_path
    config.model.encoder = args.encoder
    config.model.embedding_dim, config.model.num_heads, config.model.num_layers = 256, 4, 3
    data = prepare_data(config.data)
    model = build_model(config.model, data.vocab.size, config.data.max_len)
    histories = data.split.validation.history[:args.histories]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    model.query_embeddings(histories, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = args.batch_size or eval_batch_size(histories.shape[1])
    print(f"{args.encoder}, {len(histories)} histories of L = {histories.shape[1]}, "
          f"{batch} per pass: peak RSS {before:.0f} MB before, {after:.0f} MB after; "
          f"{seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
