"""Which backbones the features stage may embed with: the names in features.backbone and
features.auto_backbones, checked without torch (graft.models.catalogue) so that `graft <stage>`
rejects a typo before anything heavy loads."""

from __future__ import annotations

from graft.core.config import ConfigError, FeaturesParams
from graft.models.catalogue import check_backbone

AUTO = "auto"  # features.backbone: choose among auto_backbones by LogME on the training rows


def check_params(p: FeaturesParams, source: str = "params") -> None:
    """features.backbone and features.auto_backbones name known backbones (graft.core.config
    checked every range); raises ConfigError naming the key."""
    check_backbone(p.backbone, "features.backbone", source, also=(AUTO,))
    for name in p.auto_backbones:
        check_backbone(name, "features.auto_backbones", source)
    if p.cluster is not None and not p.cluster.startswith(("tcp://", "tls://")):
        raise ConfigError(f"{source}: features.cluster = {p.cluster!r} must be a Dask scheduler "
                          "address, tcp://HOST:PORT (or tls://), or null to embed in-process")
