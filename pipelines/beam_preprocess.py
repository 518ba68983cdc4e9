"""Preprocess interaction logs with Apache Beam into sharded TFRecords that
`tfrec-proxy train --data shards --data-path OUT` trains on
(`tfrec_proxy.data.beam_preprocess`; needs `pip install -e ".[beam]"`).

Local (DirectRunner):

    python pipelines/beam_preprocess.py --input ../shared/data/ml-1m/ml-1m.txt \
        --output /tmp/ml1m-shards --split per-user --max-len 200

Other runners: every flag this script does not know goes to Beam, e.g.

    --runner=FlinkRunner --flink_master=host:8081 --environment_type=LOOPBACK
    --runner=SparkRunner --spark_master_url=spark://host:7077
    --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp \
        --requirements_file=requirements.txt   # workers need tfrec_proxy + TF

with `--input 'gs://bucket/logs/*.csv' --output gs://bucket/shards`.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfrec_proxy.config import DataConfig, RunConfig  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help="interaction files or glob patterns (ties in time keep this "
                             "order, then line order)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--config", help="a run config JSON whose data section to use "
                                         "(the flags below override it)")
    parser.add_argument("--data-format", choices=("auto", "movielens", "sasrec", "csv",
                                                  "tsv"))
    parser.add_argument("--user-column")
    parser.add_argument("--item-column")
    parser.add_argument("--time-column", help="'' for none: the line order is the time "
                                              "order")
    parser.add_argument("--split", choices=("chunked", "per-user"))
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--min-len", type=int)
    parser.add_argument("--num-shards", type=int, default=0,
                        help="shards per output (0: the runner decides)")
    return parser.parse_known_args(argv)


def data_config(args) -> DataConfig:
    config = RunConfig.from_json(args.config).data if args.config else DataConfig()
    config.source, config.cold_items = "file", 0
    for flag, field in (("data_format", "file_format"), ("user_column", "user_column"),
                        ("item_column", "item_column"), ("split", "split"),
                        ("max_len", "max_len"), ("min_len", "min_len")):
        if getattr(args, flag) is not None:
            setattr(config, field, getattr(args, flag))
    if args.time_column is not None:
        config.time_column = args.time_column or None
    return config


def main(argv=None) -> int:
    from tfrec_proxy.data.beam_preprocess import run_pipeline

    args, beam_args = parse_args(argv)
    config = data_config(args)
    started = time.perf_counter()
    run_pipeline(config, args.input, args.output, num_shards=args.num_shards,
                 beam_args=beam_args)
    print(f"Wrote {args.output} in {time.perf_counter() - started:.1f} s; train with: "
          f"tfrec-proxy train --data shards --data-path {args.output} --max-len "
          f"{config.max_len} --split {config.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
