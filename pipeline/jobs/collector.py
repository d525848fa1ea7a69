"""Python's cycle collector told to look less often: a run allocates millions of short-lived objects.

The collector looks at the youngest objects every 700 allocations (of
objects it tracks) and at every object alive every few dozen looks; the
objects of a run (records, chunks, batches, an input each for 30,000 small
files) are freed by their reference counts long before any look, so nearly
all that work finds nothing: over 30,000 one-document files, 0.45-0.73 s
of the run's 6.5 s of CPU. Two changes, made once a process:

- what is alive when the first run starts (the imported modules, the
  config) is frozen: the whole-heap looks skip it;
- the youngest objects are looked at every :data:`YOUNG` allocations.

Over those files the collector's time went from 0.45-0.50 s to 0.17 s (the
JSONL of the same documents: 0.29 to 0.14-0.16 s), peak RSS unchanged
(200-213 MB against 210-214); looking every 5,000 gained no more and held
5-15 MB more. Cycles of garbage still go, a little later.
"""

from __future__ import annotations

import gc

#: allocations between two looks at the youngest objects (Python's default: 700)
YOUNG = 2_000

_set = False


def collect_less() -> None:
    """Freeze what is alive now and look at young objects every :data:`YOUNG` allocations (once a process;
    not when the collector is off or was set to look less often already)."""
    global _set
    if _set:
        return
    _set = True
    young, older, oldest = gc.get_threshold()
    if not gc.isenabled() or young == 0 or young >= YOUNG:
        return
    gc.freeze()
    gc.set_threshold(YOUNG, older, oldest)
