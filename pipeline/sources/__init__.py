"""Where records come from: the input files of ``source.path`` and the records in them.

``listing`` lists the files (local or any fsspec URL; S3 a page at a time),
tells their formats and shares big files out among workers, into the
column-by-column inputs of ``listed`` (a million in about 100 MB); ``fetch``
fetches the next small objects side by side while one is parsed, handing
them out in listing order (on S3 through obstore where it can do the GET as
s3fs would: ``s3_get``); ``readers`` streams one file as
records, with a module per kind of format (``jsonl``, ``tabular``) and the
helpers they share (``records``). Unusable records become failures, never
exceptions.
"""
