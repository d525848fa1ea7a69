"""Where records come from: the input files of ``source.path`` and the records in them.

``listing`` lists the files (local or any fsspec URL), tells their formats
and shares big files out among workers; ``readers`` streams one file as
records, with a module per kind of format (``jsonl``, ``tabular``) and the
helpers they share (``records``). Unusable records become failures, never
exceptions.
"""
