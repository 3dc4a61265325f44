"""Trainer workers on Ray: candidate VW rankers learn the joined log, a launch gate promotes them.

One Ray actor per candidate configuration reads the committed joined parts in order. For each
part it first scores the part's events with its model as it stands (progressive validation),
then learns the part with VW's own file reader, then commits a checkpoint (model, next part,
events trained) atomically. A driver-side `TrainingLoop` runs every candidate on the same
parts in parallel, asks the launch gate whether a candidate beats the active model on the
events the active model served, and publishes and activates it only when the gate says ship.

Layout under `<data_dir>/training/`:

    records.jsonl                       what was trained, judged, promoted and refused (docs/training.md)
    .lock                               one training loop per data directory
    candidates/<name>/candidate.json    the candidate's name and RankerConfig
    candidates/<name>/CHECKPOINT        the committed step (replaced atomically: the commit point)
    candidates/<name>/steps.jsonl       every committed step, in order
    candidates/<name>/models/step-<n:08d>.model(.json)   the model of step n (the last two kept)
    candidates/<name>/scores/part-<p:08d>.parquet        progressive scores of part p
    judged/versions/<version>.model(.json)               every refused model (a store never activated)
"""
