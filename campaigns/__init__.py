"""The campaigns molsteer runs, and how each is put together and carried from start to shutdown.

``run.py`` is the wiring; this package holds what it wires: the campaign registry below, the command line
generated from each campaign's settings (:mod:`campaigns.cli`), each campaign's assembly (:mod:`campaigns.design`,
:mod:`campaigns.forcefield`, under the contract of :mod:`campaigns.contract`), start-up
(:mod:`campaigns.startup`) and supervision and shutdown (:mod:`campaigns.lifecycle`).
"""

from __future__ import annotations

from configs.settings.models import CampaignSettings, CommonSettings, ForcefieldSettings

CAMPAIGNS: dict[str, tuple[type[CommonSettings], str, str]] = {
    "design": (CampaignSettings, "campaigns.design",
               "Find molecules with the largest ionization energy or smallest atomization energy, spending quantum "
               "chemistry where a surrogate model says it matters most. (Other campaign: run.py forcefield --help)"),
    "forcefield": (ForcefieldSettings, "campaigns.forcefield",
                   "Train an ensemble of machine-learned interatomic potentials where molecular dynamics with the "
                   "model goes, spending quantum chemistry only where the ensemble disagrees or audits fail."),
}
"""Campaign name → its settings (the CLI is generated from them), its assembly module, and its description."""
