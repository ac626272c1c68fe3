"""The file ``spark-submit`` launches: one feedrank Spark job per submission.

    spark-submit --master spark://host:7077 --driver-memory 2g \\
        jobs/spark_entry.py training-data --start 2026-11-01 --end 2026-11-03

The arguments are a ``feedrank`` subcommand that runs on Spark (:data:`SPARK_COMMANDS`) and
its options. The job's session takes master, resources and addresses from ``spark-submit``
and ``spark-defaults.conf`` and the rest from the profile (:func:`feedrank.spark.get_spark`);
the run folder and every other setting come from the ``FEEDRANK_*`` environment as usual.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file, as spark-submit is given it.
ENTRY = Path(__file__).resolve()
# Subcommands whose work runs in a SparkSession (`feedrank train` on the cluster profile
# trains with xgboost.spark; on the local profile it trains in the driver).
SPARK_COMMANDS: tuple[str, ...] = ("land", "features", "training-data", "train", "monitor")


def main(argv: list[str] | None = None) -> None:
    """Run ``feedrank <argv>`` when it names a Spark job; exit 2 with one line otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in SPARK_COMMANDS:
        got = repr(args[0]) if args else "nothing"
        sys.stderr.write(
            f"spark_entry: expected a Spark job ({', '.join(SPARK_COMMANDS)}), got {got}\n"
        )
        raise SystemExit(2)
    from feedrank.cli import main as feedrank_main

    sys.argv = ["feedrank", *args]
    feedrank_main()


if __name__ == "__main__":
    main()
