"""Every strategy a scenario can name, as one explicit table (no import-time registration).

The schema's check, the CLI's choices and ``compare`` all read this table.
"""

from __future__ import annotations

from pydantic import ValidationError

from p2pgan.config.schema import Scenario
from p2pgan.errors import ConfigError
from p2pgan.strategies.base import RunFacts, Strategy
from p2pgan.strategies.centralized import Centralized
from p2pgan.strategies.fedavg import FedAvgGAN, SplitFedAvg, USplitFedAvg
from p2pgan.strategies.fedprox import FedProx
from p2pgan.strategies.huscf import HuSCF, HuSCFNoCluster, HuSCFNoKLD
from p2pgan.strategies.mdgan import MDGan

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (HuSCF, HuSCFNoKLD, HuSCFNoCluster, SplitFedAvg, USplitFedAvg, FedAvgGAN, FedProx, Centralized, MDGan)
}


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def strategy_class(name: str, source: str = "", key: str = "strategy.name") -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(source, key, f"unknown strategy {name!r} (expected one of: {', '.join(STRATEGIES)})") from None


def strategy_for(scenario: Scenario) -> Strategy:
    """The scenario's strategy with its options validated, bound to the run (``file:key`` errors)."""
    source = str(scenario.source or "")
    cls = strategy_class(scenario.strategy.name, source)
    strategy = cls(parse_options(cls, scenario.strategy.options, source))
    strategy.bind(RunFacts(scenario.seed, len(scenario.domains)))
    return strategy


def parse_options(cls: type[Strategy], options: dict, source: str = ""):
    allowed = ", ".join(cls.Options.__pydantic_fields__) or "none"
    try:
        return cls.Options(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            message = f"not an option of strategy {cls.name} (its options: {allowed})"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if "input" in error:
                message += f", got {error['input']!r}"
        raise ConfigError(source, f"strategy.{loc}", message) from None
    except TypeError as exc:
        raise ConfigError(source, "strategy", f"{exc} (options of {cls.name}: {allowed})") from None


def create_strategy(name: str, *, seed: int = 0, num_domains: int = 1, **options) -> Strategy:
    """A strategy outside a scenario (tests, tools): ``options`` as its YAML section would give them."""
    cls = strategy_class(name)
    strategy = cls(parse_options(cls, options))
    strategy.bind(RunFacts(seed, num_domains))
    return strategy
