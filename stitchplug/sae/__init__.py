"""SAE primitives every plugin shares (exported from :mod:`stitchplug.api`): the project's one TopK
trainer and its config (:mod:`.trainer`, :class:`~.trainer.TrainerConfig`), the TopK module
(:mod:`.topk`), its per-step FLOPs (:mod:`.step_flops`), SAELens-format folders (:mod:`.io`) and
Eq. 6 with the random same-shape baseline (:mod:`.transfer`).

The ``sae`` artifact kind (plugin ``stitchplug_sae``) is built on these; other plugins reach SAEs of a
run through the pipeline (``requires = ("sae",)``) or :meth:`~stitchplug.runfolder.RunFolder.load_artifact`.
"""
