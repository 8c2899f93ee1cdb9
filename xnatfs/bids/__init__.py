"""The BIDS view's logic: names, rules, plans and dataset files, free of FUSE.

Nothing here talks FUSE or HTTP; the file system (``xnatfs.fs``) calls it
with the records the XNAT listings gave (:mod:`xnatfs.client.models`) and
serves what it answers. The parts, each documented in its module:

- :mod:`.labels`: the BIDS-safe label rule, session-prefix dropping, entity
  order (``subject_labels``, ``session_labels``, ``bids_label``);
- :mod:`.rules`, :mod:`.reproin`, :mod:`.vendor`, :mod:`.dcm2bids`: the rule
  sets (built-in ReproIn + vendor names; a dcm2bids-format config);
- :mod:`.fields`: what rules may ask about a scan, and the caller-supplied
  header lookup for fields the listing lacks;
- :mod:`.plan`: one session's scans → ``SessionPlan`` of ``BidsTarget`` /
  ``LeftOut`` entries, with runs and collisions settled;
- :mod:`.dataset`: ``dataset_description.json``, ``README``,
  ``participants.tsv``/``.json``, ``sessions.tsv``, ``scans.tsv`` as bytes;
- :mod:`.convert`: dcm2niix run on a series the content cache holds, its
  outputs kept in that cache (this one does I/O: call it from a worker thread).
"""
