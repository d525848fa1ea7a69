"""The path a record takes through a run: read → chunk → batch → embed → write.

Each stage is one async function ``stage(receive, send, *, its deps)`` that
reads from a bounded anyio memory object stream, sends to the next, and
closes what it owns; back-pressure comes from the bounded buffers. Blocking
work runs in worker threads under a capacity limiter. The job
(:mod:`pipeline.jobs.run`) builds the graph and owns the drain.

- :mod:`.read`: records from input files, resuming where each was committed
- :mod:`.chunk`: records cut into chunks the API accepts
- :mod:`.batch`: chunks packed into numbered batches, within a :class:`~.batch.Window`
- :mod:`.embed`: batches sent to an :class:`~pipeline.embed.Embedder`
- :mod:`.write`: answers put back in read order and handed to the :class:`~pipeline.dataset.sink.Sink`
"""
