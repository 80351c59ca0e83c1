"""How a classifier is fitted for the manifest's classes: the strategies of `finetune.strategy`,
registered by name (graft.strategies.registry), and the training loop the network ones share.

Adding a strategy is one module (a graft.strategies.base `Strategy`, or a `FeatureStrategy` for a
head on cached embeddings) plus one `register_strategy` line below; config validation, the
finetune and features stages, `auto`, `ensemble` and the few-shot benchmark all read the
registry. Imports
graft.embeddings, graft.models, graft.data and graft.core. Importing this package imports no
strategy module: each is imported when first used, so checking params stays light.
"""

from graft.strategies.registry import (
    check_params,
    extra_backbones,
    get_strategy,
    register_strategy,
    registered_modules,
    strategy_kind,
    strategy_names,
    unregister_strategy,
)

__all__ = ["check_params", "extra_backbones", "get_strategy", "register_strategy",
           "registered_modules", "strategy_kind", "strategy_names", "unregister_strategy"]

# The order is the order `auto` tries the feature strategies in (a tie keeps the earlier one).
register_strategy("linear_probe", "features", "graft.strategies.linear_probe:LinearProbe")
register_strategy("prototype", "features", "graft.strategies.prototype:Prototype")
register_strategy("svm", "features", "graft.strategies.svm:SVM")
register_strategy("finetune", "network", "graft.strategies.network:Finetune")
register_strategy("lp_ft", "network", "graft.strategies.network:LinearProbeThenFinetune")
register_strategy("ensemble", "composite", "graft.strategies.ensemble:Ensemble",
                  backbones_key="ensemble_backbones")
register_strategy("auto", "composite", "graft.strategies.auto:Auto")
