"""Host adapters: one per editor API. They read pixels and selection, create layers, show progress."""
