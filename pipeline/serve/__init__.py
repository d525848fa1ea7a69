"""``pipeline serve``: a local server that speaks the embeddings API of SPEC.md.

For development and tests only; nothing in production imports it, and it
imports nothing from ``pipeline.jobs`` or ``pipeline.stages``. ``options``
holds what the server can be told (and its flags), ``models`` where vectors
come from (deterministic fakes or the local wordllama model), ``limits`` its
rate-limit windows and headers, ``faults`` the injected faults, ``stats`` its
counters, ``protocol`` the request rules and reply bodies, and ``app`` the
HTTP connections, routing and entry points (:func:`app.running_server`,
:func:`app.main`).
"""
