"""Configs: the schema (`_schema`), loading and the validation gate (`_load`), and the
wording of config errors (`_wording`)."""

from ._load import (
    BUILTIN_DIR as BUILTIN_DIR,
    apply_overrides as apply_overrides,
    builtin_configs as builtin_configs,
    dump_yaml as dump_yaml,
    load_config as load_config,
    load_yaml as load_yaml,
    resolve_config as resolve_config,
    validate as validate,
)
from ._schema import (
    LBFGS_KWARGS as LBFGS_KWARGS,
    OPTIMIZERS as OPTIMIZERS,
    SCHEDULES as SCHEDULES,
    CNFConfig as CNFConfig,
    Config as Config,
    DistributedConfig as DistributedConfig,
    FieldConfig as FieldConfig,
    ModelConfig as ModelConfig,
    OptimizerConfig as OptimizerConfig,
    RegularisationConfig as RegularisationConfig,
    SolverConfig as SolverConfig,
    SpiralData as SpiralData,
    Toy2DData as Toy2DData,
    TrainConfig as TrainConfig,
)
