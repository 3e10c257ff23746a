"""The paired activation cache: corpora, token alignment, context windows, HDF5 writer and reader.

Public entry points (kept stable for the stitch, SAE and evaluation stages):

- :func:`stitchplug.cache.corpus.open_corpus` -- documents from a registered corpus, ``file:PATH`` or ``hub:NAME``;
- :func:`stitchplug.cache.align.align_by_end_offsets` / :func:`~stitchplug.cache.align.get_aligner`;
- :func:`stitchplug.cache.windows.paired_windows` -- one text as aligned context windows for two models;
- :mod:`stitchplug.cache.plan` -- documents -> windows -> shards -> forward batches (what a cache run computes);
- :func:`stitchplug.cache.writer.build_cache` -- write (or resume) a cache;
- :func:`stitchplug.cache.select.build_selected_cache` -- the same, B's layer chosen by an SVCCA probe first;
- :func:`stitchplug.cache.reader.open_cache` -- read it (:class:`~stitchplug.cache.reader.PairedCache`).

The on-disk layout is documented in ``docs/cache.md``.
"""
