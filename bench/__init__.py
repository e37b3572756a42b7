"""nms-cds benchmark: scenario generators, the floor app and the runner (``make bench``)."""
