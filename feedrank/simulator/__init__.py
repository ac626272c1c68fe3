"""A simulated Twitter-like world: the old chronological system's logs plus ground truth.

Public entry points:

- :class:`feedrank.simulator.world.World`: users, authors, follow graph, latent interests and
  affinities, tweets; ``World.true_probabilities`` is the ground truth of every head.
- :func:`feedrank.simulator.backfill.simulate_backfill`: days of logs as Hive-partitioned
  Parquet (``<out>/<table>/date=YYYY-MM-DD/part-0.parquet``);
  ``feedrank.lake.read_lake_table`` reads back.
- :func:`feedrank.simulator.live.run_live`: the same events on Kafka, optionally closing the
  loop by engaging with the feeds the scorer serves.

The engagement formula is documented in :mod:`feedrank.simulator.engagement` and in
``docs/simulator.md``.
"""
