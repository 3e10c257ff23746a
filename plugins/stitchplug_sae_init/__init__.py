"""The transferred-SAE-as-initialisation experiment (paper §3.1): ``stitchplug experiment init``.

Its own plugin (entry point ``sae_init``), separate from the SAE artifact kind it builds on: it reads a
run folder that ``stitchplug run --artifact sae`` wrote, trains two arms with the SAE plugin's one
trainer (:mod:`stitchplug.sae.trainer`) and reports FLOPs savings.

- :mod:`.command`: the CLI command and :func:`~.command.run_on_folder` (run folder in, sections out)
- :mod:`.experiment`: :class:`~.experiment.InitExperimentConfig`, the two arms, :func:`~.experiment.run_init_experiment`
- :mod:`.ledger`: what each arm paid (:class:`~.ledger.ArmLedger`, the stitch's fitting FLOPs)
- :mod:`.scaling`: threshold crossings, savings, compute frontier, power-law fit
- :mod:`.report`: plots and the report section
- :mod:`.synthetic`: a synthetic stand-in for tests and ``bench/flops.py``
"""

from stitchplug.api import hookimpl


@hookimpl
def register_commands(cli):
    from .command import add_init_command

    add_init_command(cli)
