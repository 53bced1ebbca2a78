"""The power-cut simulator's parts: the recording shim (``shim.c``) and the load (``load``)."""
