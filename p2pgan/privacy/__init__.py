"""What a curious server can infer from what travels: the leakage audit of each cut.

Modules: :mod:`~p2pgan.privacy.options` (the ``privacy:`` section), :mod:`~p2pgan.privacy.observer`
(the tensors a server receives per cut), :mod:`~p2pgan.privacy.attacks` (inversion decoder and
label probe), :mod:`~p2pgan.privacy.dcor` and :mod:`~p2pgan.privacy.ssim` (the measures),
:mod:`~p2pgan.privacy.audit` (the run and its files) and :mod:`~p2pgan.privacy.report` (the table).
Only the options are imported here, so the config layer can depend on them without a cycle.
"""

from p2pgan.config.privacy import PrivacyOptions, parse_privacy_options

__all__ = ["PrivacyOptions", "parse_privacy_options"]
