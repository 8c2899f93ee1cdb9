"""The BIDS view's logic, free of FUSE: naming rules and conversion (:mod:`xnatfs.bids.convert`)."""
