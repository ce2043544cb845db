"""The DRAM tier: ``flashtensors serve``, a local daemon that keeps whole checkpoints in
shared memory so that processes loading the same model again (new replicas, restarts)
map it instead of reading it.

``flash.load_dict`` uses a running daemon by itself and falls back to a direct load when
none is reachable; nothing here needs to be imported by hand. See docs/daemon.md.

Example:
    $ flashtensors serve --memory 64GiB &
    >>> from flashtensors import flash
    >>> sd = flash.load_dict("/models/m")        # served from the daemon's memory
    >>> from flashtensors.daemon.client import DaemonClient
    >>> DaemonClient().ls()                        # what the daemon holds
"""
