"""One module per command, and the pieces they share.

- :mod:`.run` (``pipeline run``): wires the stages for one rank and owns the drain;
  :mod:`.watch`, :mod:`.shutdown` and :mod:`.progress` are its parts
- :mod:`.validate` (``pipeline validate``): counts and estimates, no API call
- :mod:`.retry_failed` (``pipeline retry-failed``): errors shards embedded again
- :mod:`.executor`: the Executor seam, what runs a job's ranks: this process's one rank, or
  (:mod:`.ray_executor`, :mod:`.ray_rank`, :mod:`.ray_outcome`) every rank as a Ray task
- :mod:`.search` (``pipeline search``): the nearest rows of a sink to a query
- :mod:`.inputs`, :mod:`.outcome`: shared by the commands (inputs of a rank; how a command ended)

No command module imports another command's module.
"""
