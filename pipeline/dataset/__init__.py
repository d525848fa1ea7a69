"""Where vectors are kept, and the on-disk format of a file dataset.

- :mod:`.sink`: the Sink protocol the job writes through, and :func:`~.sink.open_sink`
- :mod:`.writer`: the file dataset as a sink (shards, then the manifest, per commit), with
  :mod:`.resume_state` (how far each input is committed), :mod:`.ledger` (the manifest saved
  behind the lease, conditionally on a store), :mod:`.opening` (crash leftovers, missing shards),
  :mod:`.pending` (a commit's accounting) and :mod:`.replace` (a source's rows leaving
  copy-on-write); :mod:`.self_reuse` and :mod:`.postgres_reuse` give a sink's own vectors to a
  rerun's changed documents
- :mod:`.open_shards`, :mod:`.shard_writer`, :mod:`.tables`: the shards a commit will publish and
  their names; one shard file being written; rows as Arrow tables
- :mod:`.shards`: the one reader of a shard file (Parquet or Arrow IPC)
- :mod:`.retrying`: store operations retried while the store blinks
- :mod:`.manifest`: ``_manifest.json``, the ledger (shards, totals, runs, the state files)
- :mod:`.state`, :mod:`.state_files`: the per-input resume state, and its ``_state/`` Parquet files
  (one per commit, with what it changed; merged now and then)
- :mod:`.lease`: one writer per rank
- :mod:`.reuse_index`: the content-hash index of an earlier dataset (``run.reuse_from``)
- :mod:`.inspect`: ``pipeline inspect``'s view, checked against the files
- :mod:`.postgres`: Postgres + pgvector as a sink (``sink.path: postgresql://...``), with
  :mod:`.postgres_session` (connection and lock), :mod:`.postgres_state` (settings, runs,
  resume state), :mod:`.postgres_rows` (binary COPY), :mod:`.postgres_schema` (DDL, index)
  and :mod:`.postgres_inspect`
"""
