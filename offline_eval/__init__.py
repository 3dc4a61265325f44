"""Counterfactual evaluation of shelf orderings from logs, and the launch gate.

- `offline_eval.readers.read_log`: slate tables (Parquet, CSV, DataFrame, a directory of Parquet
  parts) and joined DSJSON logs.
- `offline_eval.evaluate.evaluate`: every estimator's value, interval and diagnostics for a target.
- `offline_eval.sharded.evaluate_parts`: the same for a log in Parquet parts, part by part on Ray.
- `offline_eval.scoring`: a policy's probabilities on logged events (fixed or progressive).
- `offline_eval.gate.compare`: candidate vs baseline on the same log, with a ship verdict.
- `offline_eval.obd`: the Open Bandit Dataset sample as a slate log.

See docs/offline_eval.md.
"""
